//! An incident's evidence as one export, for a report to CEOP or the
//! police: each verified snapshot as `images/HASH.png` (decrypted and
//! checked against its hash by the evidence store), `metadata.json`
//! (`hallmonitor.incident_export.v1`: the incident, its captures, who
//! exported it, when and from where) and `SHA256SUMS` over every other
//! file, in the format `sha256sum -c` reads.
//!
//! `entries` hands the files over one at a time, so the command line's
//! folder export (`incidents export`) writes each as it comes and the
//! console's download (`zip`) builds an archive in memory under a byte
//! cap: both hold the same files. A verified capture whose image fails its
//! check stops the export and names the capture: evidence leaves whole or
//! not at all. Nothing here writes to disk; the folder export's staging
//! and rename are the command's.

use std::io::Write;

use jiff::Timestamp;
use serde::Serialize;

use crate::evidence::{EvidenceError, EvidenceStore, sha256_hex};
use crate::incidents::{CaptureRow, IncidentRecord};

pub const SCHEMA: &str = "hallmonitor.incident_export.v1";
pub const METADATA: &str = "metadata.json";
pub const SUMS: &str = "SHA256SUMS";

/// Who exported the evidence, when and from where (for `metadata.json`).
pub struct Exporter<'a> {
    /// As the audit log names people: `console:NAME`, `cli:ACCOUNT`.
    pub by: &'a str,
    /// The browser's address for a console download; None from the
    /// command line.
    pub from: Option<&'a str>,
    pub at: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the image of capture {capture} cannot be exported: {source}")]
    Image {
        capture: i64,
        #[source]
        source: EvidenceError,
    },
    #[error("writing {name}: {source}")]
    Write {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the evidence is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("writing {METADATA}: {0}")]
    Metadata(#[from] serde_json::Error),
}

/// `metadata.json`. The incident and captures are serialised as the
/// command line's JSON shows them.
#[derive(Serialize)]
struct Metadata<'a> {
    schema: &'static str,
    exported_at: Timestamp,
    exported_by: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exported_from: Option<&'a str>,
    incident: &'a IncidentRecord,
    captures: &'a [CaptureRow],
}

/// Hands each file of the export to `write` as (name, bytes): the images
/// of verified captures (one file per distinct image), then
/// `metadata.json`, then `SHA256SUMS` over the files before it. Stops at
/// the first error, `write`'s included.
pub fn entries(
    evidence: &EvidenceStore,
    incident: &IncidentRecord,
    captures: &[CaptureRow],
    exporter: &Exporter<'_>,
    mut write: impl FnMut(&str, &[u8]) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let mut sums = String::new();
    let mut written: Vec<&str> = Vec::new();
    for capture in captures.iter().filter(|c| c.image_status == "verified") {
        if written.contains(&capture.image_sha256.as_str()) {
            continue;
        }
        // `get` refuses anything but a SHA-256 in hex, so the hash is safe
        // in a file name once it has returned.
        let image = evidence
            .get(&capture.image_sha256)
            .map_err(|source| ExportError::Image {
                capture: capture.id,
                source,
            })?;
        let name = format!("images/{}.png", capture.image_sha256);
        write(&name, &image)?;
        sums.push_str(&format!("{}  {name}\n", sha256_hex(&image)));
        written.push(&capture.image_sha256);
    }
    let metadata = serde_json::to_vec_pretty(&Metadata {
        schema: SCHEMA,
        exported_at: exporter.at,
        exported_by: exporter.by,
        exported_from: exporter.from,
        incident,
        captures,
    })?;
    write(METADATA, &metadata)?;
    sums.push_str(&format!("{}  {METADATA}\n", sha256_hex(&metadata)));
    write(SUMS, sums.as_bytes())
}

/// The folder every file of an incident's export sits in, in a zip as on
/// disk.
pub fn folder_name(incident: i64) -> String {
    format!("incident-{incident}")
}

/// The export as a zip archive built in memory, its files under
/// `incident-ID/` (as the folder export lays them out), stored rather
/// than compressed (snapshots are PNGs) and dated `exporter.at` (UTC).
/// Refused with `TooLarge` once the files pass `limit` bytes, before the
/// next image is read.
pub fn zip(
    evidence: &EvidenceStore,
    incident: &IncidentRecord,
    captures: &[CaptureRow],
    exporter: &Exporter<'_>,
    limit: u64,
) -> Result<Vec<u8>, ExportError> {
    use zip::write::SimpleFileOptions;
    let zip_error = |name: &str, e: zip::result::ZipError| ExportError::Write {
        name: name.to_owned(),
        source: e.into(),
    };
    let folder = folder_name(incident.id);
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip_time(exporter.at));
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut total: u64 = 0;
    entries(evidence, incident, captures, exporter, |name, bytes| {
        total = total.saturating_add(bytes.len() as u64);
        if total > limit {
            return Err(ExportError::TooLarge { limit });
        }
        let name = format!("{folder}/{name}");
        archive
            .start_file(name.as_str(), options)
            .map_err(|e| zip_error(&name, e))?;
        archive
            .write_all(bytes)
            .map_err(|source| ExportError::Write {
                name: name.clone(),
                source,
            })
    })?;
    let archive = archive
        .finish()
        .map_err(|e| zip_error("the zip directory", e))?;
    Ok(archive.into_inner())
}

/// A zip entry's time (no zone in the format: UTC here); the format's
/// earliest, 1980, for a time it cannot hold.
fn zip_time(at: Timestamp) -> zip::DateTime {
    let utc = at.to_zoned(jiff::tz::TimeZone::UTC);
    let parts = (
        u16::try_from(utc.year()),
        u8::try_from(utc.month()),
        u8::try_from(utc.day()),
        u8::try_from(utc.hour()),
        u8::try_from(utc.minute()),
        u8::try_from(utc.second()),
    );
    let (Ok(year), Ok(month), Ok(day), Ok(hour), Ok(minute), Ok(second)) = parts else {
        return zip::DateTime::default();
    };
    zip::DateTime::from_date_and_time(year, month, day, hour, minute, second).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceId;

    fn t(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn incident() -> IncidentRecord {
        IncidentRecord {
            id: 7,
            site: "Cabot".into(),
            device_id: DeviceId::from_string("dev-1"),
            hostname: "lab-01".into(),
            account: "pupil1".into(),
            category: "self-harm".into(),
            severity: 5,
            status: "open".into(),
            opened_at: t("2026-03-02T09:00:00Z"),
            last_at: t("2026-03-02T09:05:00Z"),
            capture_count: 3,
            review: Default::default(),
            reviewed: false,
        }
    }

    fn capture(id: i64, image_sha256: &str, status: &str) -> CaptureRow {
        CaptureRow {
            id,
            seq: id,
            occurred_at: t("2026-03-02T09:00:00Z"),
            rule_id: "selfharm-1".into(),
            category: "self-harm".into(),
            severity: 5,
            matched_text: "hurt myself".into(),
            window_title: "how to hurt myself".into(),
            process_name: "chromium".into(),
            account: "pupil1".into(),
            image_sha256: image_sha256.into(),
            image_status: status.into(),
            no_image_reason: String::new(),
            repeat_count: 0,
            kind: "snapshot".into(),
            file_path: String::new(),
            file_sha256: String::new(),
            policy_version: 1,
            review: Default::default(),
            context: vec![crate::model::ContextEntry {
                title: "Maths homework".into(),
                process_name: "firefox".into(),
                first_seen: t("2026-03-02T08:40:00Z"),
                last_seen: t("2026-03-02T08:55:00Z"),
            }],
        }
    }

    fn exporter() -> Exporter<'static> {
        Exporter {
            by: "console:dsl1",
            from: Some("192.0.2.7"),
            at: t("2026-03-03T10:30:00Z"),
        }
    }

    fn collect(
        evidence: &EvidenceStore,
        captures: &[CaptureRow],
    ) -> Result<Vec<(String, Vec<u8>)>, ExportError> {
        let mut files = Vec::new();
        entries(
            evidence,
            &incident(),
            captures,
            &exporter(),
            |name, bytes| {
                files.push((name.to_owned(), bytes.to_vec()));
                Ok(())
            },
        )?;
        Ok(files)
    }

    fn store() -> (tempfile::TempDir, EvidenceStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let evidence = EvidenceStore::open(dir.path()).unwrap();
        (dir, evidence)
    }

    #[test]
    fn the_sums_cover_every_other_file_and_only_verified_images_go() {
        let (_dir, evidence) = store();
        let first = b"first snapshot".to_vec();
        let second = b"second snapshot".to_vec();
        let (a, b) = (sha256_hex(&first), sha256_hex(&second));
        evidence.put(&first, &a).unwrap();
        evidence.put(&second, &b).unwrap();
        let declared = sha256_hex(b"what the device claimed");
        let captures = [
            capture(1, &a, "verified"),
            // The device's image did not match the hash it declared: the
            // capture is evidence, its image is not.
            capture(2, &declared, "hash_mismatch"),
            capture(3, &b, "verified"),
            // The same screen again: one file.
            capture(4, &a, "verified"),
        ];

        let files = collect(&evidence, &captures).unwrap();

        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("images/{a}.png").as_str(),
                &format!("images/{b}.png"),
                METADATA,
                SUMS
            ]
        );
        assert_eq!(files[0].1, first);
        assert_eq!(files[1].1, second);
        let (_, sums) = files.last().unwrap();
        let lines: Vec<(String, String)> = std::str::from_utf8(sums)
            .unwrap()
            .lines()
            .map(|l| {
                let (sum, name) = l.split_once("  ").unwrap();
                (sum.to_owned(), name.to_owned())
            })
            .collect();
        let others: Vec<(String, String)> = files[..files.len() - 1]
            .iter()
            .map(|(name, bytes)| (sha256_hex(bytes), name.clone()))
            .collect();
        assert_eq!(lines, others, "one line per other file, its own sum");
        let metadata: serde_json::Value = serde_json::from_slice(&files[2].1).unwrap();
        assert_eq!(metadata["schema"], SCHEMA);
        assert_eq!(metadata["exported_by"], "console:dsl1");
        assert_eq!(metadata["exported_from"], "192.0.2.7");
        assert_eq!(metadata["exported_at"], "2026-03-03T10:30:00Z");
        assert_eq!(metadata["incident"]["id"], 7);
        assert_eq!(metadata["captures"].as_array().unwrap().len(), 4);
        // What was on screen before each capture goes with it.
        assert_eq!(
            metadata["captures"][0]["context"],
            serde_json::json!([{
                "title": "Maths homework",
                "process_name": "firefox",
                "first_seen": "2026-03-02T08:40:00Z",
                "last_seen": "2026-03-02T08:55:00Z",
            }])
        );
        assert!(!String::from_utf8_lossy(sums).contains(&declared));
    }

    #[test]
    fn an_image_that_fails_its_check_stops_the_export_and_is_named() {
        let (dir, evidence) = store();
        let good = b"a snapshot".to_vec();
        let hash = sha256_hex(&good);
        evidence.put(&good, &hash).unwrap();
        // Another image's file put under this hash, as an altered store
        // would have it: sealed for the other hash, it does not open as
        // this one.
        let other = b"another snapshot".to_vec();
        let other_hash = sha256_hex(&other);
        evidence.put(&other, &other_hash).unwrap();
        let path = |h: &str| dir.path().join("evidence").join(&h[..2]).join(h);
        std::fs::copy(path(&other_hash), path(&hash)).unwrap();

        let refused = collect(&evidence, &[capture(9, &hash, "verified")]);

        let Err(error) = refused else {
            panic!("exported an image that fails its check: {refused:?}");
        };
        assert!(
            matches!(error, ExportError::Image { capture: 9, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("capture 9"), "{error}");
    }

    #[test]
    fn the_zip_holds_the_same_files_under_the_incident_folder() {
        let (_dir, evidence) = store();
        let image = b"snapshot".to_vec();
        let hash = sha256_hex(&image);
        evidence.put(&image, &hash).unwrap();
        let captures = [capture(1, &hash, "verified")];
        let files = collect(&evidence, &captures).unwrap();

        let bytes = zip(&evidence, &incident(), &captures, &exporter(), 1 << 20).unwrap();

        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!(archive.len(), files.len());
        for (name, want) in &files {
            let mut entry = archive.by_name(&format!("incident-7/{name}")).unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut got).unwrap();
            assert_eq!(&got, want, "{name}");
            assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
        }
    }

    #[test]
    fn a_zip_past_its_limit_is_refused() {
        let (_dir, evidence) = store();
        let image = vec![7u8; 2048];
        let hash = sha256_hex(&image);
        evidence.put(&image, &hash).unwrap();
        let refused = zip(
            &evidence,
            &incident(),
            &[capture(1, &hash, "verified")],
            &exporter(),
            1024,
        );
        assert!(
            matches!(refused, Err(ExportError::TooLarge { limit: 1024 })),
            "{refused:?}"
        );
    }

    #[test]
    fn zip_times_are_utc_and_fall_back_to_1980() {
        let time = zip_time(t("2026-03-03T10:30:41Z"));
        assert_eq!(
            (
                time.year(),
                time.month(),
                time.day(),
                time.hour(),
                time.minute()
            ),
            (2026, 3, 3, 10, 30)
        );
        assert_eq!(
            zip_time(t("1970-01-01T00:00:00Z")),
            zip::DateTime::default()
        );
    }
}
