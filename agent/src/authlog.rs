//! Two-step sign-ins seen on this device, for the 2FA-freshness rule.
//!
//! The agent follows the configured authentication logs (`[mfa]
//! auth_logs`) and matches each new line against the configured patterns
//! (`[[mfa.patterns]]`: a method name and a regular expression with a
//! `user` group). Each match becomes an MFA-completion event for that
//! account on this device, with the file and line as evidence.
//!
//! Following survives what log files go through: the position (file
//! identity, offset, line) is kept in the outbox state, so a restart reads
//! on from where it stopped; a rotated file (renamed, a new one created) is
//! finished from its rotated name (`PATH.1`) before the new file is read
//! from its start; a truncated file (copytruncate) is read from its start.
//! `notify` wakes the reader when the files change; a slow poll covers file
//! systems where it cannot.

use std::io::{BufRead, Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A configured pattern, compiled.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub method: String,
    pub regex: regex::Regex,
}

/// Where reading of one log stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Device and inode of the file read.
    pub file_id: (u64, u64),
    pub offset: u64,
    pub line: u64,
    /// SHA-256 of the file's first `head_len` bytes: a file truncated and
    /// written past the old offset again is recognised by its new start.
    pub head_len: u64,
    pub head: String,
}

/// Bytes of a file's start compared to recognise it.
const HEAD: u64 = 256;

fn head_digest(path: &Path, len: u64) -> std::io::Result<String> {
    let mut bytes = Vec::with_capacity(len as usize);
    std::fs::File::open(path)?
        .take(len)
        .read_to_end(&mut bytes)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// A second factor accepted for `account`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub account: String,
    pub method: String,
    /// `PATH:LINE`
    pub source: String,
    pub at: Timestamp,
}

/// Reads what was appended to `path` since `position`, following rotation
/// and truncation; returns the matches and the new position. A missing
/// file is not an error (not every system has every log).
pub fn read_new(
    path: &Path,
    position: Option<&Position>,
    patterns: &[Pattern],
    now: Timestamp,
) -> std::io::Result<(Vec<Found>, Option<Position>)> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), position.cloned()));
        }
        Err(e) => return Err(e),
    };
    let id = (meta.dev(), meta.ino());
    let mut found = Vec::new();
    let same_start = |p: &Position| {
        meta.len() >= p.offset && head_digest(path, p.head_len).is_ok_and(|h| h == p.head)
    };
    let start = match position {
        Some(p) if p.file_id == id && same_start(p) => p.clone(),
        Some(p) if p.file_id == id => {
            // Truncated in place: everything in it now is new.
            Position {
                file_id: id,
                ..Position::default()
            }
        }
        Some(p) => {
            // Rotated: finish the old file under its rotated name first.
            let rotated = rotated_name(path);
            if let Ok(old) = std::fs::metadata(&rotated)
                && (old.dev(), old.ino()) == p.file_id
            {
                let (mut tail, _) = scan(&rotated, p, patterns, now)?;
                found.append(&mut tail);
            }
            Position {
                file_id: id,
                ..Position::default()
            }
        }
        None => Position {
            file_id: id,
            ..Position::default()
        },
    };
    let (mut new, end) = scan(path, &start, patterns, now)?;
    found.append(&mut new);
    Ok((found, Some(end)))
}

fn rotated_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Reads complete lines of `path` from `from`; a last line without its
/// newline is left for the next read (it is still being written).
fn scan(
    path: &Path,
    from: &Position,
    patterns: &[Pattern],
    now: Timestamp,
) -> std::io::Result<(Vec<Found>, Position)> {
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(from.offset))?;
    let mut reader = std::io::BufReader::new(file.take(u64::MAX));
    let mut position = from.clone();
    let mut found = Vec::new();
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let n = reader.read_until(b'\n', &mut buffer)?;
        if n == 0 || buffer.last() != Some(&b'\n') {
            break;
        }
        position.offset += n as u64;
        position.line += 1;
        if position.head_len < HEAD.min(position.offset) {
            position.head_len = HEAD.min(position.offset);
            position.head = head_digest(path, position.head_len)?;
        }
        let line = String::from_utf8_lossy(&buffer);
        for pattern in patterns {
            let Some(captures) = pattern.regex.captures(&line) else {
                continue;
            };
            let Some(user) = captures.name("user") else {
                continue;
            };
            found.push(Found {
                account: user.as_str().to_owned(),
                method: captures
                    .name("method")
                    .map_or(pattern.method.clone(), |m| m.as_str().to_owned()),
                source: format!("{}:{}", path.display(), position.line),
                at: line_time(&line, now),
            });
            break;
        }
    }
    Ok((found, position))
}

/// The time a syslog line was written: an RFC 3339 stamp at its start
/// (rsyslog's high-precision format, journald exports), or the classic
/// `Jan 30 20:04:56` in local time in the most recent year that is not in
/// the future; otherwise `now`.
fn line_time(line: &str, now: Timestamp) -> Timestamp {
    let first = line.split_whitespace().next().unwrap_or("");
    if let Ok(t) = first.parse::<Timestamp>() {
        return t;
    }
    // rsyslog without the colon in the offset: 2026-09-13T16:03:27+0200
    if first.len() > 5 {
        let (head, tail) = first.split_at(first.len() - 5);
        if (tail.starts_with('+') || tail.starts_with('-'))
            && let Ok(t) = format!("{head}{}:{}", &tail[..3], &tail[3..]).parse::<Timestamp>()
        {
            return t;
        }
    }
    let classic: String = line.chars().take(15).collect();
    let zone = jiff::tz::TimeZone::system();
    let year = now.to_zoned(zone.clone()).year();
    for y in [year, year - 1] {
        let Ok(civil) =
            jiff::civil::DateTime::strptime("%Y %b %e %H:%M:%S", format!("{y} {classic}"))
        else {
            break;
        };
        if let Ok(zoned) = civil.to_zoned(zone.clone())
            && zoned.timestamp() <= now + jiff::SignedDuration::from_hours(24)
        {
            return zoned.timestamp();
        }
    }
    now
}

/// The default patterns: modules that log accepted second factors, and
/// the agent's own PAM hook (`hallmonitor-agent mfa-hook`) for modules
/// that do not (pam_u2f, pam_oath; see deploy/pam).
pub fn default_patterns() -> Vec<(String, String)> {
    vec![
        (
            "pam_google_authenticator".into(),
            r"\(pam_google_authenticator\)(?:\[\d+\])?: Accepted google_authenticator for (?P<user>\S+)".into(),
        ),
        (
            "hallmonitor_hook".into(),
            r"hallmonitor-mfa: (?P<method>\S+) accepted for (?P<user>\S+)".into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns() -> Vec<Pattern> {
        default_patterns()
            .into_iter()
            .map(|(method, regex)| Pattern {
                method,
                regex: regex::Regex::new(&regex).unwrap(),
            })
            .collect()
    }

    const ACCEPTED: &str = "Nov 20 08:01:02 lab-07 sshd(pam_google_authenticator)[12366]: Accepted google_authenticator for j.smith\n";
    const OTHER: &str = "Nov 20 08:01:02 lab-07 sshd[12340]: Accepted keyboard-interactive/pam for j.smith from 10.0.2.2 port 60640 ssh2\n";
    const INVALID: &str = "Nov 20 08:01:09 lab-07 sshd(pam_google_authenticator)[12367]: Invalid verification code for pupil1\n";

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn accepted_second_factors_only_and_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("auth.log");
        std::fs::write(&log, format!("{OTHER}{ACCEPTED}{INVALID}")).unwrap();
        let (found, position) = read_new(&log, None, &patterns(), now()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].account, "j.smith");
        assert_eq!(found[0].method, "pam_google_authenticator");
        assert!(
            found[0].source.ends_with("auth.log:2"),
            "{}",
            found[0].source
        );
        let (again, _) = read_new(&log, position.as_ref(), &patterns(), now()).unwrap();
        assert!(again.is_empty(), "nothing new");
    }

    #[test]
    fn a_half_written_line_waits_for_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("auth.log");
        let (head, tail) = ACCEPTED.split_at(40);
        std::fs::write(&log, head).unwrap();
        let (found, position) = read_new(&log, None, &patterns(), now()).unwrap();
        assert!(found.is_empty());
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, tail.as_bytes()).unwrap();
        let (found, _) = read_new(&log, position.as_ref(), &patterns(), now()).unwrap();
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn rotation_and_truncation_lose_nothing_and_repeat_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("auth.log");
        std::fs::write(&log, ACCEPTED).unwrap();
        let (found, position) = read_new(&log, None, &patterns(), now()).unwrap();
        assert_eq!(found.len(), 1);
        // One more line, then logrotate renames the file and a new one
        // starts, before the agent reads again.
        let hook =
            "2026-11-21T09:00:00+00:00 lab-07 hallmonitor-mfa: pam_u2f accepted for k.jones\n";
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, hook.as_bytes()).unwrap();
        std::fs::rename(&log, dir.path().join("auth.log.1")).unwrap();
        std::fs::write(&log, ACCEPTED.replace("j.smith", "a.brown")).unwrap();
        let (found, position) = read_new(&log, position.as_ref(), &patterns(), now()).unwrap();
        let accounts: Vec<&str> = found.iter().map(|f| f.account.as_str()).collect();
        assert_eq!(accounts, ["k.jones", "a.brown"]);
        assert_eq!(found[0].method, "pam_u2f");
        assert_eq!(found[0].at, "2026-11-21T09:00:00Z".parse().unwrap());
        // copytruncate: same file, emptied, then written again.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, INVALID.as_bytes()).unwrap();
        std::io::Write::write_all(&mut file, ACCEPTED.as_bytes()).unwrap();
        let (found, _) = read_new(&log, position.as_ref(), &patterns(), now()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].account, "j.smith");
    }

    #[test]
    fn line_times() {
        let n = now();
        assert_eq!(
            line_time("2026-09-13T16:03:27+0200 host sshd[1]: x", n),
            "2026-09-13T14:03:27Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            line_time("2026-09-13T16:03:27.250000+02:00 host sshd[1]: x", n),
            "2026-09-13T14:03:27.25Z".parse::<Timestamp>().unwrap()
        );
        // Classic syslog has no year: the latest year not in the future.
        let december = line_time("Dec 30 10:00:00 host sshd[1]: x", n);
        assert_eq!(december.to_zoned(jiff::tz::TimeZone::system()).year(), 2025);
        assert_eq!(line_time("garbage", n), n);
    }
}
