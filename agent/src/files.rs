//! Unapproved software: new executables or scripts appearing in users'
//! Downloads folders or on removable media become file-alert events.
//!
//! The daemon watches the configured folders (`[files] watch`, globs such
//! as `/home/*/Downloads` and `/media/*/*`, expanded when the watcher
//! starts and again every minute so new users and new media are picked
//! up) with `notify`. A file counts when its name ends in one of the
//! configured extensions or it is executable; the alert carries its path,
//! SHA-256 and the account that owns it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hallmonitor_proto::v1;

/// Whether `path` looks like software: a listed extension, or a regular
/// file with an execute bit.
pub fn is_software(path: &Path, extensions: &[String]) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    // Browsers download to a temporary name first.
    if name.ends_with(".part") || name.ends_with(".crdownload") || name.starts_with('.') {
        return false;
    }
    extensions
        .iter()
        .any(|e| name.ends_with(&format!(".{}", e.to_lowercase())))
        || meta.permissions().mode() & 0o111 != 0
}

/// The alert for a file (None when it cannot be read, e.g. gone again).
pub fn alert(path: &Path, severity: u32) -> Option<v1::FileAlert> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let sha256: String = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(v1::FileAlert {
        path: path.display().to_string(),
        rule_id: "unapproved-software".into(),
        category: "unapproved-software".into(),
        severity,
        account: crate::accounts::account_of(meta.uid()),
        sha256,
    })
}

/// The folders the globs name now.
pub fn expand(globs: &[String]) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = globs
        .iter()
        .filter_map(|g| glob::glob(g).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    folders.dedup();
    folders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_is_recognised_by_extension_or_execute_bit() {
        let dir = tempfile::tempdir().unwrap();
        let exts = vec!["sh".to_string(), "exe".into(), "AppImage".into()];
        let file = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        assert!(is_software(&file("game.EXE", 0o644), &exts));
        assert!(is_software(&file("tool.AppImage", 0o644), &exts));
        assert!(is_software(&file("run", 0o755), &exts), "execute bit");
        assert!(!is_software(&file("essay.docx", 0o644), &exts));
        assert!(
            !is_software(&file("setup.exe.part", 0o644), &exts),
            "still downloading"
        );
        let alert = alert(&dir.path().join("game.EXE"), 2).unwrap();
        assert_eq!(alert.severity, 2);
        assert_eq!(alert.sha256.len(), 64);
        assert!(
            expand(&[format!("{}/*", dir.path().display())]).is_empty(),
            "files are not folders"
        );
        assert_eq!(
            expand(&[dir.path().display().to_string()]),
            [dir.path().to_path_buf()]
        );
    }
}
