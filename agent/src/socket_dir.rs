//! The folder of the session helpers' socket.
//!
//! Session helpers run as the logged-in user and must reach the daemon's
//! socket, so its folder must be searchable by everyone (0755), whatever
//! umask the daemon runs under (the shipped unit sets `UMask=0077`, which
//! would make a folder created with default permissions 0700). It must not
//! be writable by anyone else either: whoever can write the folder can put
//! their own socket in the daemon's place and feed helpers a policy.
//!
//! Under systemd the unit creates `/run/hallmonitor` itself
//! (`RuntimeDirectory=hallmonitor`, `RuntimeDirectoryMode=0755`); this
//! covers other service managers and a configured socket elsewhere.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Mode of a socket folder the daemon creates.
pub const MODE: u32 = 0o755;

/// Makes sure the folder of `socket` exists and is fit for it: a folder the
/// daemon creates gets mode 0755 set explicitly (not through the umask); an
/// existing folder is left as it is, but refused when it is not owned by
/// the daemon's account or root, or is writable by group or others.
pub fn prepare_socket_dir(socket: &Path) -> std::io::Result<()> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => return check_existing(dir, &meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(above) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(above)?;
    }
    match std::fs::DirBuilder::new().mode(MODE).create(dir) {
        Ok(()) => {}
        // Created by someone else since we looked: judge what is there.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return check_existing(dir, &std::fs::symlink_metadata(dir)?);
        }
        Err(e) => return Err(e),
    }
    // The umask has trimmed the mode given to mkdir: set it outright.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(MODE))
}

/// Judges the existing folder of `socket` as `prepare_socket_dir` would,
/// without creating anything (for `doctor`). NotFound when it is missing.
pub fn check_socket_dir(socket: &Path) -> std::io::Result<()> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    check_existing(dir, &std::fs::symlink_metadata(dir)?)
}

fn check_existing(dir: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("socket folder {}: {why}", dir.display()),
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
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    /// Runs `test` (a test of this module) alone in a child process whose
    /// umask is 0077, as under the shipped unit.
    fn in_child_with_strict_umask(test: &str) -> bool {
        in_child_with_umask(test, 0o077)
    }

    /// Whether this is the child process running `test` (full test name)
    /// alone under umask `mask`: the parent starts it, waits for it and
    /// checks it passed. The umask is per process, and changing it in the
    /// test process would change the files of tests running beside.
    pub(crate) fn in_child_with_umask(test: &str, mask: libc::mode_t) -> bool {
        if std::env::var_os("HALLMONITOR_TEST_UMASK_CHILD").is_some() {
            // SAFETY: umask only sets the process's file mode mask.
            unsafe { libc::umask(mask) };
            return true;
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("HALLMONITOR_TEST_UMASK_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        false
    }

    #[test]
    fn a_new_folder_is_0755_whatever_the_umask() {
        if !in_child_with_strict_umask("socket_dir::tests::a_new_folder_is_0755_whatever_the_umask")
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/hallmonitor/agent.sock");
        prepare_socket_dir(&socket).unwrap();
        assert_eq!(mode(&dir.path().join("run/hallmonitor")), 0o755);
        // What `create_dir_all` alone (the old code) gives under this umask.
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        assert_eq!(mode(&plain), 0o700, "the umask is in force");
        // Again: an existing folder of ours is fine.
        prepare_socket_dir(&socket).unwrap();
    }

    #[test]
    fn a_folder_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        for bits in [0o777, 0o1777, 0o775] {
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(bits)).unwrap();
            let err = prepare_socket_dir(&shared.join("agent.sock")).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{bits:o}");
            assert!(err.to_string().contains("writable by"), "{err}");
        }
        // An existing private folder (a test's temporary folder) is left
        // as it is: helpers running as root can still reach it.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
        prepare_socket_dir(&shared.join("agent.sock")).unwrap();
        assert_eq!(mode(&shared), 0o700);
        // A symbolic link in the folder's place is not followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&shared, &link).unwrap();
        assert!(prepare_socket_dir(&link.join("agent.sock")).is_err());
    }

    #[test]
    fn a_folder_owned_by_another_account_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give a folder away
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = prepare_socket_dir(&theirs.join("agent.sock")).unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
