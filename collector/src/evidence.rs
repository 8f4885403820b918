//! Evidence at rest: snapshot images, content-addressed by the SHA-256 of
//! the image and encrypted with AES-256-GCM (ring).
//!
//! Files live in `DATA/evidence/ab/abcdef…` (the image's hash); each holds
//! `HME2`, the 8-byte id of the key that sealed it, a 12-byte random nonce,
//! then the ciphertext and tag, authenticated with the hash as associated
//! data, so a file swapped for another's fails to open. (Files written
//! before key ids existed hold only nonce and ciphertext; every key is
//! tried on them.)
//!
//! The key is `DATA/pki/evidence.key` (32 random bytes, mode 0600), created
//! on first use; back it up with the database. `rotate_key` makes a new
//! one, keeps the old one in `DATA/pki/evidence-keys/ID.key` while any file
//! needs it, re-encrypts every file under the new key and then deletes the
//! old keys no file uses. A running collector notices the new key before
//! its next write (it checks whether the key file was replaced); one that
//! checked just before the replacement can still write under the old key
//! after the rotation listed the files, so a second pass re-encrypts those
//! before any old key is deleted, and a writer that finds the key replaced
//! once its file is in place seals it again under the new key. An old key
//! is only deleted once no file needs it, so rotating while the collector
//! runs loses nothing.
//!
//! Writes go to a temporary file of their own renamed into place, so a
//! crash never leaves a half-written image under its final name, and two
//! writers of one image (a collector and a rotation) never mix.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: the evidence key must be 32 bytes")]
    BadKey(PathBuf),
    #[error("image {0} failed to decrypt (wrong key or altered file)")]
    Tampered(String),
    #[error("not a SHA-256 in hex: '{0}'")]
    BadHash(String),
    #[error("no random numbers from the operating system")]
    Random,
}

type Result<T> = std::result::Result<T, EvidenceError>;

const MAGIC: &[u8; 4] = b"HME2";
type KeyId = [u8; 8];

struct Key {
    id: KeyId,
    key: LessSafeKey,
}

struct KeyRing {
    current: Key,
    /// Older keys some files may still need.
    retired: Vec<Key>,
    /// The current key file's identity (inode, change time), to notice a
    /// rotation: the new key is a new file renamed into place.
    current_changed: Option<(u64, i64, i64)>,
}

impl KeyRing {
    fn find(&self, id: &KeyId) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|k| &k.id == id)
    }
}

pub struct EvidenceStore {
    dir: PathBuf,
    pki: PathBuf,
    keys: RwLock<KeyRing>,
}

/// What a key rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The new key's id, hex.
    pub key_id: String,
    pub reencrypted: u64,
    /// Old keys deleted because no file needs them any more.
    pub old_keys_removed: u64,
    /// Old keys kept because some file still needs them (unreadable files
    /// are reported by `failed`).
    pub old_keys_kept: u64,
    pub failed: Vec<String>,
}

/// What [`EvidenceStore::remove_images`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// Images deleted (or already absent).
    pub removed: u64,
    /// (hash, why) of those left alone.
    pub skipped: Vec<(String, String)>,
}

/// SHA-256 in hex, as images are named (the same function as certificate
/// fingerprints).
pub use crate::pki::sha256_hex;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn key_from_bytes(bytes: &[u8], path: &Path) -> Result<Key> {
    let unbound =
        UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| EvidenceError::BadKey(path.into()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    Ok(Key {
        id,
        key: LessSafeKey::new(unbound),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| EvidenceError::Random)?;
    Ok(bytes)
}

/// Writes `bytes` to `path` through a temporary file (mode 0600, synced),
/// so `path` is either the old or the new content, never half of one.
fn write_atomically(path: &Path, parts: &[&[u8]]) -> Result<()> {
    // A temporary name of its own: a collector and a rotation can write
    // the same image at once, and must not interleave in one file.
    let temp = path.with_extension(format!("tmp-{}", hex(&random::<8>()?)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io(&temp))?;
    for part in parts {
        file.write_all(part).map_err(io(&temp))?;
    }
    file.sync_all().map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))
}

fn modified(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

#[cfg(test)]
impl Rotation {
    fn key_id_bytes(&self) -> Vec<u8> {
        (0..self.key_id.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&self.key_id[i..i + 2], 16).unwrap_or(0))
            .collect()
    }
}

impl EvidenceStore {
    /// Opens the store of a data directory, creating the key if missing.
    pub fn open(data: &Path) -> Result<EvidenceStore> {
        let pki = data.join("pki");
        let keys = load_keys(&pki)?;
        Ok(EvidenceStore {
            dir: data.join("evidence"),
            pki,
            keys: RwLock::new(keys),
        })
    }

    fn current_key_path(&self) -> PathBuf {
        self.pki.join("evidence.key")
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        // Keys are replaced whole; a panic elsewhere cannot leave half a ring.
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the keys again when the key file changed (a rotation by
    /// another process); true when it had.
    fn refresh(&self) -> Result<bool> {
        let changed = modified(&self.current_key_path());
        if changed == self.read_keys().current_changed {
            return Ok(false);
        }
        let ring = load_keys(&self.pki)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = ring;
        Ok(true)
    }

    fn path(&self, sha256: &str) -> Result<PathBuf> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EvidenceError::BadHash(sha256.into()));
        }
        let sha = sha256.to_ascii_lowercase();
        Ok(self.dir.join(&sha[..2]).join(&sha))
    }

    /// Whether an image with this hash is stored already.
    pub fn contains(&self, sha256: &str) -> bool {
        self.path(sha256).is_ok_and(|path| path.exists())
    }

    /// Stores an image whose hash the caller verified; storing the same
    /// image again does nothing.
    pub fn put(&self, image: &[u8], sha256: &str) -> Result<()> {
        self.put_with(image, sha256, &mut || {})
    }

    /// `put`, calling `before_rename` between sealing the image and
    /// renaming it into place (tests rotate the key there).
    fn put_with(&self, image: &[u8], sha256: &str, before_rename: &mut dyn FnMut()) -> Result<()> {
        let path = self.path(sha256)?;
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().expect("evidence paths have a folder");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        self.refresh()?;
        let sealed = self.seal(image, sha256)?;
        before_rename();
        write_atomically(&path, &[&sealed])?;
        // A rotation that replaced the key meanwhile may have listed the
        // files before this one was in place, and will delete the key it
        // is sealed under: seal it again under the new key.
        while self.refresh()? {
            self.write_sealed(&path, image, sha256)?;
        }
        Ok(())
    }

    /// The file's bytes for an image: marker, key id, nonce, ciphertext.
    fn seal(&self, image: &[u8], sha256: &str) -> Result<Vec<u8>> {
        let nonce = random::<12>()?;
        let mut sealed = image.to_vec();
        let keys = self.read_keys();
        keys.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(sha256.to_ascii_lowercase().as_bytes()),
                &mut sealed,
            )
            .map_err(|_| EvidenceError::Tampered(sha256.into()))?;
        Ok([&MAGIC[..], &keys.current.id, &nonce, &sealed].concat())
    }

    fn write_sealed(&self, path: &Path, image: &[u8], sha256: &str) -> Result<()> {
        write_atomically(path, &[&self.seal(image, sha256)?])
    }

    /// The image, decrypted and checked against its hash.
    pub fn get(&self, sha256: &str) -> Result<Vec<u8>> {
        let path = self.path(sha256)?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        self.refresh()?;
        let (plain, _) = self.open_sealed(&bytes, sha256)?;
        Ok(plain)
    }

    /// Decrypts a file's bytes: the image and the id of the key that
    /// opened it.
    fn open_sealed(&self, bytes: &[u8], sha256: &str) -> Result<(Vec<u8>, KeyId)> {
        let sha = sha256.to_ascii_lowercase();
        let keys = self.read_keys();
        let open = |key: &Key, nonce: &[u8], sealed: &[u8]| -> Option<Vec<u8>> {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut sealed = sealed.to_vec();
            let plain = key
                .key
                .open_in_place(nonce, Aad::from(sha.as_bytes()), &mut sealed)
                .ok()?;
            (sha256_hex(plain) == sha).then(|| plain.to_vec())
        };
        if bytes.len() >= 4 + 8 + 12 + 16 && bytes.starts_with(MAGIC) {
            let mut id = [0u8; 8];
            id.copy_from_slice(&bytes[4..12]);
            if let Some(key) = keys.find(&id)
                && let Some(plain) = open(key, &bytes[12..24], &bytes[24..])
            {
                return Ok((plain, id));
            }
        }
        // Written before key ids (or a nonce that happens to start with
        // the marker): nonce and ciphertext, under any key.
        if bytes.len() >= 12 + 16 {
            for key in std::iter::once(&keys.current).chain(&keys.retired) {
                if let Some(plain) = open(key, &bytes[..12], &bytes[12..]) {
                    return Ok((plain, [0; 8]));
                }
            }
        }
        Err(EvidenceError::Tampered(sha256.into()))
    }

    pub fn remove(&self, sha256: &str) -> Result<()> {
        let path = self.path(sha256)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Removes each image, going on past any it cannot remove, so one bad
    /// hash never leaves the rest behind: a hash that is not SHA-256 hex
    /// names no evidence file and is skipped, as is a file that cannot be
    /// deleted; both come back in `skipped` with why.
    pub fn remove_images<'a>(&self, hashes: impl IntoIterator<Item = &'a str>) -> Removal {
        let mut removal = Removal::default();
        for sha in hashes {
            match self.remove(sha) {
                Ok(()) => removal.removed += 1,
                Err(e) => removal.skipped.push((sha.to_owned(), e.to_string())),
            }
        }
        removal
    }

    /// Every stored image: (hash, path).
    fn files(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut files = Vec::new();
        let Ok(folders) = std::fs::read_dir(&self.dir) else {
            return Ok(files);
        };
        for folder in folders.flatten() {
            let Ok(entries) = std::fs::read_dir(folder.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    files.push((name, entry.path()));
                }
            }
        }
        Ok(files)
    }

    /// Makes a new key, re-encrypts every image under it, and deletes the
    /// old keys once no file needs them. Safe to run while the collector
    /// runs, and to run again after an interruption.
    pub fn rotate_key(&self) -> Result<Rotation> {
        self.rotate_key_with(&mut || {})
    }

    /// `rotate_key`, calling `between_passes` after the first pass (tests
    /// write there as a running collector can).
    fn rotate_key_with(&self, between_passes: &mut dyn FnMut()) -> Result<Rotation> {
        let retired_dir = self.pki.join("evidence-keys");
        std::fs::create_dir_all(&retired_dir).map_err(io(&retired_dir))?;
        // The old key is kept before the new one replaces it, so no file
        // is ever without its key.
        let current_path = self.current_key_path();
        let old = std::fs::read(&current_path).map_err(io(&current_path))?;
        let old_id = key_from_bytes(&old, &current_path)?.id;
        write_atomically(&retired_dir.join(format!("{}.key", hex(&old_id))), &[&old])?;
        let new = random::<32>()?;
        write_atomically(&current_path, &[&new])?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = load_keys(&self.pki)?;
        let current = self.read_keys().current.id;

        let mut rotation = Rotation {
            key_id: hex(&current),
            reencrypted: 0,
            old_keys_removed: 0,
            old_keys_kept: 0,
            failed: Vec::new(),
        };
        // Unreadable files, with the id of the key they name (if any).
        let mut unreadable: BTreeMap<String, Option<KeyId>> = BTreeMap::new();
        self.reencrypt_pass(&current, &mut rotation, &mut unreadable)?;
        between_passes();
        // A collector that read the key file just before it was replaced
        // can have written an image under the old key after the first pass
        // listed the files: the second pass, before any old key goes,
        // re-encrypts it.
        self.reencrypt_pass(&current, &mut rotation, &mut unreadable)?;
        rotation.failed = unreadable.keys().cloned().collect();
        let still_needed: Vec<KeyId> = unreadable.values().flatten().copied().collect();
        // A file an unreadable one might need keeps every old key.
        let keep_all = unreadable.values().any(Option::is_none);
        for key in &self.read_keys().retired {
            let path = retired_dir.join(format!("{}.key", hex(&key.id)));
            if keep_all || still_needed.contains(&key.id) {
                rotation.old_keys_kept += 1;
                continue;
            }
            std::fs::remove_file(&path).map_err(io(&path))?;
            rotation.old_keys_removed += 1;
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = load_keys(&self.pki)?;
        Ok(rotation)
    }

    /// Re-encrypts under `current` every file not already under it;
    /// files that do not open are noted in `unreadable` (a file that opens
    /// on a later pass is taken off).
    fn reencrypt_pass(
        &self,
        current: &KeyId,
        rotation: &mut Rotation,
        unreadable: &mut BTreeMap<String, Option<KeyId>>,
    ) -> Result<()> {
        for (sha, path) in self.files()? {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Purged since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            if bytes.starts_with(MAGIC) && bytes.get(4..12) == Some(&current[..]) {
                continue;
            }
            match self.open_sealed(&bytes, &sha) {
                Ok((plain, _)) => {
                    self.write_sealed(&path, &plain, &sha)?;
                    rotation.reencrypted += 1;
                    unreadable.remove(&sha);
                }
                Err(e) => {
                    if !unreadable.contains_key(&sha) {
                        tracing::error!(sha256 = %sha, error = %e, "evidence file not re-encrypted");
                    }
                    let named = bytes
                        .strip_prefix(MAGIC)
                        .and_then(|rest| rest.get(..8))
                        .and_then(|id| KeyId::try_from(id).ok());
                    unreadable.insert(sha, named);
                }
            }
        }
        Ok(())
    }
}

/// The current key (created if missing) and the retired ones.
fn load_keys(pki: &Path) -> Result<KeyRing> {
    let key_path = pki.join("evidence.key");
    let bytes = match std::fs::read(&key_path) {
        Ok(key) => key,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random::<32>()?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(io(&key_path))?;
            file.write_all(&key).map_err(io(&key_path))?;
            file.sync_all().map_err(io(&key_path))?;
            key.to_vec()
        }
        Err(e) => return Err(io(&key_path)(e)),
    };
    let current = key_from_bytes(&bytes, &key_path)?;
    let mut retired = Vec::new();
    let retired_dir = pki.join("evidence-keys");
    if let Ok(entries) = std::fs::read_dir(&retired_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "key") {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let key = key_from_bytes(&bytes, &path)?;
                if key.id != current.id {
                    retired.push(key);
                }
            }
        }
    }
    Ok(KeyRing {
        current,
        retired,
        current_changed: modified(&key_path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_encrypted_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let store = EvidenceStore::open(dir.path()).unwrap();
        let image = b"\x89PNG not really, but bytes".repeat(50);
        let hash = sha256_hex(&image);
        store.put(&image, &hash).unwrap();
        store.put(&image, &hash).unwrap();
        let path = store.path(&hash).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert!(
            !on_disk.windows(4).any(|w| w == b"PNG "),
            "encrypted at rest"
        );
        use std::os::unix::fs::PermissionsExt;
        let key_mode = std::fs::metadata(dir.path().join("pki/evidence.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(store.get(&hash).unwrap(), image);
        // Reopening uses the same key.
        assert_eq!(
            EvidenceStore::open(dir.path()).unwrap().get(&hash).unwrap(),
            image
        );
        let mut altered = on_disk.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        std::fs::write(&path, altered).unwrap();
        assert!(matches!(store.get(&hash), Err(EvidenceError::Tampered(_))));
        assert!(matches!(
            store.put(&image, "../../etc/passwd"),
            Err(EvidenceError::BadHash(_))
        ));
    }

    #[test]
    fn rotating_the_key_reencrypts_everything_and_drops_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let store = EvidenceStore::open(dir.path()).unwrap();
        // Another handle, like a running collector's.
        let running = EvidenceStore::open(dir.path()).unwrap();
        let images: Vec<Vec<u8>> = (0..5u8).map(|n| vec![n; 1000]).collect();
        for image in &images {
            store.put(image, &sha256_hex(image)).unwrap();
        }
        // A file in the format from before key ids.
        let legacy = b"legacy image".to_vec();
        let legacy_sha = sha256_hex(&legacy);
        let nonce = [7u8; 12];
        let mut sealed = legacy.clone();
        store
            .read_keys()
            .current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(legacy_sha.as_bytes()),
                &mut sealed,
            )
            .unwrap();
        let legacy_path = store.path(&legacy_sha).unwrap();
        std::fs::create_dir_all(legacy_path.parent().unwrap()).unwrap();
        std::fs::write(&legacy_path, [&nonce[..], &sealed].concat()).unwrap();
        let old_key = std::fs::read(dir.path().join("pki/evidence.key")).unwrap();

        let rotation = store.rotate_key().unwrap();
        assert_eq!(rotation.reencrypted, 6);
        assert_eq!((rotation.old_keys_removed, rotation.old_keys_kept), (1, 0));
        assert!(rotation.failed.is_empty());
        let new_key = std::fs::read(dir.path().join("pki/evidence.key")).unwrap();
        assert_ne!(new_key, old_key);
        assert_eq!(
            std::fs::read_dir(dir.path().join("pki/evidence-keys"))
                .unwrap()
                .count(),
            0,
            "the old key is gone"
        );
        for image in images.iter().chain([&legacy]) {
            let sha = sha256_hex(image);
            let on_disk = std::fs::read(store.path(&sha).unwrap()).unwrap();
            assert_eq!(&on_disk[4..12], rotation.key_id_bytes().as_slice());
            assert_eq!(&store.get(&sha).unwrap(), image);
            assert_eq!(
                &running.get(&sha).unwrap(),
                image,
                "the other handle follows"
            );
        }
        // The other handle writes under the new key from now on.
        let later = b"after the rotation".to_vec();
        running.put(&later, &sha256_hex(&later)).unwrap();
        let on_disk = std::fs::read(store.path(&sha256_hex(&later)).unwrap()).unwrap();
        assert_eq!(&on_disk[4..12], rotation.key_id_bytes().as_slice());
    }

    #[test]
    fn an_image_written_under_the_old_key_during_a_rotation_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let store = EvidenceStore::open(dir.path()).unwrap();
        let first = b"before the rotation".to_vec();
        store.put(&first, &sha256_hex(&first)).unwrap();
        // A running collector that read the key file just before it was
        // replaced: it writes under the old key once the first pass has
        // listed the files.
        let running = EvidenceStore::open(dir.path()).unwrap();
        let late = b"written during the rotation".to_vec();
        let late_sha = sha256_hex(&late);
        let rotation = store
            .rotate_key_with(&mut || {
                let path = running.path(&late_sha).unwrap();
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                running.write_sealed(&path, &late, &late_sha).unwrap();
            })
            .unwrap();
        assert_eq!(rotation.reencrypted, 2, "{rotation:?}");
        assert!(rotation.failed.is_empty(), "{rotation:?}");
        assert_eq!((rotation.old_keys_removed, rotation.old_keys_kept), (1, 0));
        let reopened = EvidenceStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get(&late_sha).unwrap(), late);
        assert_eq!(reopened.get(&sha256_hex(&first)).unwrap(), first);
        let on_disk = std::fs::read(reopened.path(&late_sha).unwrap()).unwrap();
        assert_eq!(&on_disk[4..12], rotation.key_id_bytes().as_slice());
    }

    #[test]
    fn an_unreadable_file_keeps_the_old_keys_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let store = EvidenceStore::open(dir.path()).unwrap();
        let image = b"an image".to_vec();
        let sha = sha256_hex(&image);
        store.put(&image, &sha).unwrap();
        let path = store.path(&sha).unwrap();
        let mut altered = std::fs::read(&path).unwrap();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        std::fs::write(&path, altered).unwrap();
        let rotation = store.rotate_key().unwrap();
        assert_eq!(rotation.failed, vec![sha]);
        assert_eq!((rotation.old_keys_removed, rotation.old_keys_kept), (0, 1));
    }

    #[test]
    fn removing_images_goes_on_past_a_bad_hash_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let store = EvidenceStore::open(dir.path()).unwrap();
        let (a, b) = (b"first".to_vec(), b"second".to_vec());
        let (sha_a, sha_b) = (sha256_hex(&a), sha256_hex(&b));
        store.put(&a, &sha_a).unwrap();
        store.put(&b, &sha_b).unwrap();
        let removal = store.remove_images([sha_a.as_str(), "zz-not-a-hash", &sha_b, "../../etc"]);
        assert_eq!(removal.removed, 2);
        assert_eq!(
            removal.skipped,
            vec![
                (
                    "zz-not-a-hash".to_owned(),
                    "not a SHA-256 in hex: 'zz-not-a-hash'".to_owned()
                ),
                (
                    "../../etc".to_owned(),
                    "not a SHA-256 in hex: '../../etc'".to_owned()
                ),
            ]
        );
        assert!(store.files().unwrap().is_empty(), "no image left behind");
    }

    #[test]
    fn an_image_sealed_while_the_key_is_rotated_is_sealed_again_under_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let rotating = EvidenceStore::open(dir.path()).unwrap();
        let running = EvidenceStore::open(dir.path()).unwrap();
        let image = b"sealed as the key changed".to_vec();
        let sha = sha256_hex(&image);
        running
            .put_with(&image, &sha, &mut || {
                // The whole rotation happens before this image is in
                // place: neither pass sees it, and the old key goes.
                let rotation = rotating.rotate_key().unwrap();
                assert_eq!(rotation.old_keys_removed, 1, "{rotation:?}");
            })
            .unwrap();
        let reopened = EvidenceStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get(&sha).unwrap(), image);
        let folder = reopened.path(&sha).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(folder.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
