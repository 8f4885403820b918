//! Handing back the memory the daemon's start-up used.
//!
//! Most of the idle daemon's resident memory is its own code, mapped from
//! its executable. Start-up runs much more of it than the idle loop does
//! (argument and configuration parsing, enrolment, the TLS handshake, the
//! outbox's integrity check and migrations, the first facts, compiling log
//! patterns), and the kernel maps code in windows of 64 KiB around each
//! page used, so after start-up nearly all of the 7 MB of `.text` stays
//! resident although an idle minute uses a fraction of it.
//!
//! [`release`] asks the kernel to reclaim the executable's clean pages now
//! (`MADV_PAGEOUT`, Linux 5.4 and later; a page another process also maps
//! is left alone) and glibc to return the heap pages start-up freed
//! (`malloc_trim`). Nothing is lost: a reclaimed page is one the file
//! holds, read back in at its next use (from the page cache, or the disk
//! if the kernel dropped it there too); the pages the loader relocated are
//! anonymous and, without swap, stay. [`watch`] releases a minute after
//! start and every hour after that, so code that ran once (a policy update,
//! a reconnection) does not stay resident for the rest of the day either.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Start-up is over by then: enrolled, connected, facts sent.
const FIRST_RELEASE: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_secs(3600);

/// Releases after [`FIRST_RELEASE`], then every [`EVERY`], until `shutdown`.
/// A failure (an older kernel, no `/proc`) is logged once, at debug level:
/// the daemon works the same, only larger.
pub async fn watch(shutdown: CancellationToken) {
    let mut wait = FIRST_RELEASE;
    let mut said = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = EVERY;
        match tokio::task::spawn_blocking(release).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) if !said => {
                tracing::debug!(%error, "cannot hand start-up memory back");
                said = true;
            }
            Ok(Err(_)) => {}
            Err(_) => return,
        }
    }
}

/// Asks the kernel to reclaim this process's pages of its own executable
/// and glibc to return its free heap pages. See the module docs.
pub fn release() -> std::io::Result<()> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut result = Ok(());
    for (start, end) in mappings_of(&maps, &exe) {
        // SAFETY: MADV_PAGEOUT only reclaims: a clean page is read back
        // from the file at its next use, a dirty one is kept (or swapped);
        // the range is one the kernel listed as mapped.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if rc != 0 && result.is_ok() {
            result = Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and may be called from any
    // thread.
    unsafe {
        libc::malloc_trim(0);
    }
    result
}

/// The address ranges `/proc/self/maps` (given as `maps`) shows mapped
/// from `file`: its code, read-only data and relocated data.
fn mappings_of(maps: &str, file: &Path) -> Vec<(usize, usize)> {
    // After an upgrade replaced the file, the kernel appends " (deleted)".
    let file = file.to_string_lossy();
    let file = file.strip_suffix(" (deleted)").unwrap_or(&file);
    maps.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path (the path may hold
            // spaces).
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let path = fields.nth(4)?.trim_start();
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            if path != file {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (start < end).then_some((start, end))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
5581f0a00000-5581f0ae0000 r--p 00000000 fd:01 1234 /usr/bin/hallmonitor-agent
5581f0ae0000-5581f11c8000 r-xp 000e0000 fd:01 1234 /usr/bin/hallmonitor-agent
5581f11c8000-5581f1258000 rw-p 007c8000 fd:01 1234 /usr/bin/hallmonitor-agent
5581f2000000-5581f2100000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000028000 r--p 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000100000-7f0000200000 r-xp 00000000 fd:01 77 /opt/hall monitor/hallmonitor-agent
7f0000300000-7f0000301000 r-xp 00000000 fd:01 78 /usr/bin/hallmonitor-agent-old
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn only_the_files_own_mappings_are_chosen() {
        type Case<'a> = (&'a str, &'a str, &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (
                "the installed daemon",
                "/usr/bin/hallmonitor-agent",
                &[
                    (0x5581f0a00000, 0x5581f0ae0000),
                    (0x5581f0ae0000, 0x5581f11c8000),
                    (0x5581f11c8000, 0x5581f1258000),
                ],
            ),
            (
                "replaced by an upgrade",
                "/usr/bin/hallmonitor-agent (deleted)",
                &[
                    (0x5581f0a00000, 0x5581f0ae0000),
                    (0x5581f0ae0000, 0x5581f11c8000),
                    (0x5581f11c8000, 0x5581f1258000),
                ],
            ),
            (
                "a path with a space",
                "/opt/hall monitor/hallmonitor-agent",
                &[(0x7f0000100000, 0x7f0000200000)],
            ),
            ("a file not mapped", "/usr/bin/true", &[]),
        ];
        for (name, file, expected) in cases {
            assert_eq!(mappings_of(MAPS, Path::new(file)), *expected, "{name}");
        }
    }

    #[test]
    fn a_deleted_mapping_matches_its_file() {
        let maps = "55d000000000-55d000001000 r-xp 00000000 fd:01 5 /usr/bin/hallmonitor-agent (deleted)\n";
        assert_eq!(
            mappings_of(maps, Path::new("/usr/bin/hallmonitor-agent")),
            [(0x55d000000000, 0x55d000001000)]
        );
    }

    #[test]
    fn releasing_keeps_the_process_working() {
        // Reclaimed pages come back at their next use: code run and data
        // read after a release are what they were.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(
            !mappings_of(&maps, &exe).is_empty(),
            "the test maps its own file"
        );
        let _ = release();
        assert_eq!(mappings_of(MAPS, Path::new("/usr/bin/true")), []);
        assert_eq!(MAPS.lines().count(), 8);
    }
}
