//! Two-step sign-ins from the systemd journal, where journald runs.
//!
//! A text log says whatever its sender claimed (`logger -t sshd`); a
//! journal entry also carries fields the sender cannot choose, set by
//! journald from the socket's credentials. Only entries whose `_UID` is 0
//! (written by a process whose real user is root: sshd, login, display
//! managers) are read, and then matched like system-log lines: the
//! `SYSLOG_IDENTIFIER` must be a program the pattern lists and the pattern
//! must match the whole `MESSAGE`.
//!
//! Limit: a PAM module running inside `sudo` or `su` logs with the real
//! uid of the person who ran it, not 0, so second factors accepted there
//! are not counted from the journal.
//!
//! Reading goes through `journalctl --output=json` from a cursor kept by
//! the caller; each call reads at most `max_entries` entries and returns
//! the cursor to go on from. `journald_runs` says whether there is a
//! journal to read, and `latest_cursor` where it stands now (to start
//! from there rather than from its beginning).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use jiff::Timestamp;

use super::{Found, Pattern, accepted_from};

/// Authentication facilities: auth (4) and authpriv (10).
const FACILITIES: [&str; 2] = ["SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10"];

/// journald's socket: present while journald runs.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// `journalctl` (program and leading arguments), quiet and without input.
fn command(journalctl: &[String]) -> std::io::Result<Command> {
    let Some((program, leading)) = journalctl.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no journalctl command",
        ));
    };
    let mut command = Command::new(program);
    command
        .args(leading)
        .args(["--no-pager", "--quiet"])
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    Ok(command)
}

/// Whether there is a journal to read: journald's `socket` exists and
/// `journalctl -n 0` succeeds. The error says why not.
pub fn journald_runs(journalctl: &[String], socket: &Path) -> Result<(), String> {
    if !socket.exists() {
        return Err(format!("{} does not exist", socket.display()));
    }
    let shown = journalctl.join(" ");
    let status = command(journalctl)
        .and_then(|mut c| c.args(["-n", "0"]).stdout(Stdio::null()).status())
        .map_err(|e| format!("{shown}: {e}"))?;
    if !status.success() {
        return Err(format!("{shown} -n 0: {status}"));
    }
    Ok(())
}

/// The cursor of the journal's newest entry (None when it is empty): reading
/// after it reads only what is written from now on.
pub fn latest_cursor(journalctl: &[String]) -> std::io::Result<Option<String>> {
    let output = command(journalctl)?
        .args(["--output=json", "-n", "1"])
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "journalctl failed ({}) finding the newest entry",
            output.status
        )));
    }
    Ok(output
        .stdout
        .split(|b| *b == b'\n')
        .rev()
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .find_map(|entry| field(&entry, "__CURSOR").map(str::to_owned)))
}

/// A JSON field as text (journalctl writes non-UTF-8 values as byte
/// arrays; those never match).
fn field<'a>(entry: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    entry.get(name)?.as_str()
}

/// The second factor an entry records, if it is one root wrote.
pub fn entry_accepted(entry: &serde_json::Value, patterns: &[Pattern]) -> Option<(String, String)> {
    if field(entry, "_UID")? != "0" {
        return None;
    }
    let program = field(entry, "SYSLOG_IDENTIFIER")?;
    let message = field(entry, "MESSAGE")?;
    accepted_from(program, message, patterns)
}

/// When the entry was written (`__REALTIME_TIMESTAMP`, microseconds), else
/// `now`.
fn entry_time(entry: &serde_json::Value, now: Timestamp) -> Timestamp {
    field(entry, "__REALTIME_TIMESTAMP")
        .and_then(|us| us.parse::<i64>().ok())
        .and_then(|us| Timestamp::from_microsecond(us).ok())
        .unwrap_or(now)
}

/// Reads entries after `cursor` (from the journal's start when None) with
/// `journalctl` (program and leading arguments: `["journalctl"]`, or a
/// stand-in in tests); returns the matches and the cursor of the last entry
/// read (the old one when nothing new).
pub fn read_journal(
    journalctl: &[String],
    cursor: Option<&str>,
    patterns: &[Pattern],
    now: Timestamp,
    max_entries: usize,
) -> std::io::Result<(Vec<Found>, Option<String>)> {
    let mut command = command(journalctl)?;
    command
        .args(["--output=json", "_UID=0"])
        .args(FACILITIES)
        .stdout(Stdio::piped());
    if let Some(cursor) = cursor {
        command.arg(format!("--after-cursor={cursor}"));
    }
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut last = cursor.map(str::to_owned);
    let mut found = Vec::new();
    let mut read = 0;
    // One entry per line.
    let mut lines = BufReader::new(stdout).split(b'\n');
    while read < max_entries {
        let Some(line) = lines.next() else { break };
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                // Not left behind as a zombie.
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        read += 1;
        let Ok(entry) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        let Some(at) = field(&entry, "__CURSOR").map(str::to_owned) else {
            continue;
        };
        if let Some((account, method)) = entry_accepted(&entry, patterns) {
            found.push(Found {
                account,
                method,
                source: format!("journal:{at}"),
                at: entry_time(&entry, now),
            });
        }
        last = Some(at);
    }
    if read == max_entries {
        // More may follow: the next call goes on from the cursor.
        let _ = child.kill();
        let _ = child.wait();
        return Ok((found, last));
    }
    let status = child.wait()?;
    if !status.success() && read == 0 {
        // A cursor the journal no longer knows (rotated away, or a
        // journal replaced) would otherwise fail the same way forever:
        // the caller logs this and may start again without a cursor.
        return Err(std::io::Error::other(format!(
            "journalctl failed ({status}) reading after cursor {}",
            cursor.unwrap_or("(none)")
        )));
    }
    Ok((found, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns() -> Vec<Pattern> {
        crate::config::MfaConfig::default().compiled().unwrap()
    }

    fn entry(uid: &str, program: &str, message: &str, cursor: &str) -> String {
        serde_json::json!({
            "__CURSOR": cursor,
            "__REALTIME_TIMESTAMP": "1795000000000000",
            "_UID": uid,
            "SYSLOG_IDENTIFIER": program,
            "MESSAGE": message,
        })
        .to_string()
    }

    #[test]
    fn only_roots_entries_from_listed_programs_count() {
        let accepted = "Accepted google_authenticator for j.smith";
        let module = "sshd(pam_google_authenticator)";
        let cases = [
            ("sshd's module, as root", "0", module, accepted, true),
            (
                "a pupil's logger -t imitating it",
                "1001",
                module,
                accepted,
                false,
            ),
            ("root, another program", "0", "cron", accepted, false),
            (
                "root, text embedded",
                "0",
                "sshd",
                "Invalid user x sshd(pam_google_authenticator): Accepted google_authenticator for j.smith from 10.0.2.2",
                false,
            ),
            (
                "the hook's text",
                "0",
                "hallmonitor-mfa",
                "pam_u2f accepted for j.smith",
                false,
            ),
        ];
        for (name, uid, program, message, counts) in cases {
            let value: serde_json::Value =
                serde_json::from_str(&entry(uid, program, message, "c")).unwrap();
            assert_eq!(
                entry_accepted(&value, &patterns()).is_some(),
                counts,
                "{name}"
            );
        }
        let binary =
            serde_json::json!({"_UID": "0", "SYSLOG_IDENTIFIER": module, "MESSAGE": [65, 66]});
        assert_eq!(entry_accepted(&binary, &patterns()), None);
    }

    /// A stand-in for journalctl printing `entries`, and recording its
    /// arguments in `args` (run through `sh`: executing a file just written
    /// can fail with ETXTBSY while other tests fork).
    fn fake_journalctl(dir: &std::path::Path, entries: &[String]) -> Vec<String> {
        let data = dir.join("entries.json");
        std::fs::write(&data, entries.join("\n") + "\n").unwrap();
        let script = dir.join("journalctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" > {}\ncat {}\n",
                dir.join("args").display(),
                data.display()
            ),
        )
        .unwrap();
        vec!["sh".into(), script.display().to_string()]
    }

    #[test]
    fn reads_from_the_cursor_and_returns_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let module = "sshd(pam_google_authenticator)";
        let journalctl = fake_journalctl(
            dir.path(),
            &[
                entry(
                    "0",
                    module,
                    "Accepted google_authenticator for a.staff",
                    "c1",
                ),
                entry(
                    "1001",
                    module,
                    "Accepted google_authenticator for b.staff",
                    "c2",
                ),
                entry(
                    "0",
                    module,
                    "Accepted google_authenticator for c.staff",
                    "c3",
                ),
            ],
        );
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let (found, cursor) = read_journal(&journalctl, Some("c0"), &patterns(), now, 100).unwrap();
        let accounts: Vec<&str> = found.iter().map(|f| f.account.as_str()).collect();
        assert_eq!(accounts, ["a.staff", "c.staff"]);
        assert_eq!(found[0].source, "journal:c1");
        assert_eq!(found[0].at, Timestamp::from_second(1_795_000_000).unwrap());
        assert_eq!(cursor.as_deref(), Some("c3"));
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert!(args.contains("_UID=0"), "{args}");
        assert!(args.contains("--after-cursor=c0"), "{args}");
        // At most max_entries a call: the cursor says where to go on.
        let (found, cursor) = read_journal(&journalctl, None, &patterns(), now, 2).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(cursor.as_deref(), Some("c2"));
        // journalctl failing (a cursor it no longer knows) is an error.
        let failing = vec!["sh".into(), "-c".into(), "exit 1".into()];
        let err = read_journal(&failing, Some("gone"), &patterns(), now, 10).unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn journald_runs_when_its_socket_exists_and_journalctl_answers() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        let answers = fake_journalctl(dir.path(), &[]);
        let err = journald_runs(&answers, &socket).unwrap_err();
        assert!(err.contains("socket does not exist"), "{err}");
        std::fs::write(&socket, "").unwrap();
        assert_eq!(journald_runs(&answers, &socket), Ok(()));
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert!(args.contains("-n 0"), "{args}");
        let failing = vec!["sh".into(), "-c".into(), "exit 1".into()];
        let err = journald_runs(&failing, &socket).unwrap_err();
        assert!(err.contains("-n 0"), "{err}");
        let missing = vec![dir.path().join("no-such-program").display().to_string()];
        assert!(journald_runs(&missing, &socket).is_err());
    }

    #[test]
    fn the_latest_cursor_is_the_last_entrys() {
        let dir = tempfile::tempdir().unwrap();
        let module = "sshd(pam_google_authenticator)";
        let journalctl = fake_journalctl(
            dir.path(),
            &[
                entry("0", module, "x", "c1"),
                entry("1001", "cron", "y", "c2"),
            ],
        );
        assert_eq!(latest_cursor(&journalctl).unwrap().as_deref(), Some("c2"));
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert!(args.contains("-n 1"), "{args}");
        let empty = fake_journalctl(dir.path(), &[]);
        assert_eq!(latest_cursor(&empty).unwrap(), None);
    }
}
