//! The agent's data directory and the private files in it (identity,
//! outbox, disable marker, the PAM hook's log) get their modes set
//! explicitly: 0700 for folders, 0600 for files, whatever umask the agent
//! runs under (the shipped unit's is 0077, a shell's is usually 0022, a
//! package script's may be 0000).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the data directory and folders made for private files.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a private file.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents, with default modes) as 0700, or
/// tightens an existing one of ours to 0700. Refuses a folder owned by
/// another account (other than root), or something that is not a folder.
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => return tighten(dir, &meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(above) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(above)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tighten(dir, &std::fs::symlink_metadata(dir)?)
        }
        Err(e) => Err(e),
    }
}

fn tighten(dir: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        ))
    };
    if !meta.is_dir() {
        return refuse("not a folder (or a symbolic link)".into());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return refuse(format!("owned by uid {}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 && meta.uid() == me {
        tracing::warn!(folder = %dir.display(), mode = format!("{:o}", meta.mode() & 0o7777), "data folder open to others; setting 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` as a 0600 file, atomically: a temporary file
/// beside it (never following a symbolic link), synced, then renamed over
/// `path`.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let temp = std::path::PathBuf::from(name);
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)?;
    // The umask may have trimmed even 0600 (to 0400, say): set it outright.
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn folders_and_files_are_private_whatever_the_umask() {
        if !crate::socket_dir::tests::in_child_with_umask(
            "data_dir::tests::folders_and_files_are_private_whatever_the_umask",
            0,
        ) {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("var/lib/hallmonitor-agent");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        write_private(&dir.join("disabled"), b"{}").unwrap();
        assert_eq!(mode(&dir.join("disabled")), 0o600);
        assert_eq!(std::fs::read(dir.join("disabled")).unwrap(), b"{}");
        // Rewritten in place of an existing, looser file.
        std::fs::set_permissions(dir.join("disabled"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        write_private(&dir.join("disabled"), b"[]").unwrap();
        assert_eq!(mode(&dir.join("disabled")), 0o600);
        // An existing folder of ours left open to others is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_symlink_is_neither_a_data_folder_nor_followed_when_writing() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let link = root.path().join("data");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(prepare(&link).is_err());
        // A link planted at the temporary name is removed, not written through.
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join("marker.tmp")).unwrap();
        write_private(&root.path().join("marker"), b"x").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(root.path().join("marker")).unwrap(), b"x");
    }
}
