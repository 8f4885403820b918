//! Evidence at rest: snapshot images, content-addressed by the SHA-256 of
//! the image and encrypted with AES-256-GCM (ring).
//!
//! Files live in `DATA/evidence/ab/abcdef…` (the image's hash); each holds
//! a 12-byte random nonce followed by the ciphertext and tag, authenticated
//! with the hash as associated data, so a file swapped for another's fails
//! to open. The key is `DATA/pki/evidence.key` (32 random bytes, mode 0600),
//! created on first use; back it up with the database. Key rotation is not
//! built yet (it would re-encrypt every file under a new key while the
//! collector is stopped).
//!
//! Writes go to a temporary file renamed into place, so a crash never
//! leaves a half-written image under its final name.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
}

type Result<T> = std::result::Result<T, EvidenceError>;

pub struct EvidenceStore {
    dir: PathBuf,
    key: LessSafeKey,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl EvidenceStore {
    /// Opens the store of a data directory, creating the key if missing.
    pub fn open(data: &Path) -> Result<EvidenceStore> {
        let key_path = data.join("pki").join("evidence.key");
        let key = match std::fs::read(&key_path) {
            Ok(key) => key,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| EvidenceError::BadKey(key_path.clone()))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(io(&key_path))?;
                file.write_all(&key).map_err(io(&key_path))?;
                file.sync_all().map_err(io(&key_path))?;
                key
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let key = UnboundKey::new(&AES_256_GCM, &key)
            .map_err(|_| EvidenceError::BadKey(key_path.clone()))?;
        Ok(EvidenceStore {
            dir: data.join("evidence"),
            key: LessSafeKey::new(key),
        })
    }

    fn path(&self, sha256: &str) -> Result<PathBuf> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EvidenceError::BadHash(sha256.into()));
        }
        let sha = sha256.to_ascii_lowercase();
        Ok(self.dir.join(&sha[..2]).join(&sha))
    }

    /// Stores an image whose hash the caller verified; storing the same
    /// image again does nothing.
    pub fn put(&self, image: &[u8], sha256: &str) -> Result<()> {
        let path = self.path(sha256)?;
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().expect("evidence paths have a folder");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| EvidenceError::Tampered(sha256.into()))?;
        let mut sealed = image.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(sha256.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| EvidenceError::Tampered(sha256.into()))?;
        let temp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io(&temp))?;
        file.write_all(&nonce).map_err(io(&temp))?;
        file.write_all(&sealed).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        std::fs::rename(&temp, &path).map_err(io(&path))
    }

    /// The image, decrypted and checked against its hash.
    pub fn get(&self, sha256: &str) -> Result<Vec<u8>> {
        let path = self.path(sha256)?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if bytes.len() < 12 + 16 {
            return Err(EvidenceError::Tampered(sha256.into()));
        }
        let (nonce, sealed) = bytes.split_at(12);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| EvidenceError::Tampered(sha256.into()))?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(sha256.as_bytes()), &mut sealed)
            .map_err(|_| EvidenceError::Tampered(sha256.into()))?;
        if sha256_hex(plain) != sha256.to_ascii_lowercase() {
            return Err(EvidenceError::Tampered(sha256.into()));
        }
        Ok(plain.to_vec())
    }

    pub fn remove(&self, sha256: &str) -> Result<()> {
        let path = self.path(sha256)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
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
}
