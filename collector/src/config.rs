//! Collector configuration: `DATA/collector.toml`, documented by
//! `collector.example.toml` (a test loads it, so the example cannot drift).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "collector.toml";
pub const EXAMPLE: &str = include_str!("../collector.example.toml");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    pub listen: SocketAddr,
    pub enroll_listen: SocketAddr,
    pub heartbeat_interval_secs: u32,
    pub max_message_bytes: usize,
    pub max_batch_events: usize,
    pub shutdown_grace_secs: u64,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: "0.0.0.0:50051".parse().expect("valid literal"),
            enroll_listen: "0.0.0.0:50052".parse().expect("valid literal"),
            heartbeat_interval_secs: 60,
            max_message_bytes: 16 * 1024 * 1024,
            max_batch_events: 5000,
            shutdown_grace_secs: 15,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl CollectorConfig {
    pub fn load(data: &Path) -> Result<Self, ConfigError> {
        let path = data.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses TOML; errors name the file, line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: CollectorConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        };
        if config.heartbeat_interval_secs == 0 {
            return Err(invalid("heartbeat_interval_secs must be at least 1"));
        }
        if config.max_batch_events == 0 {
            return Err(invalid("max_batch_events must be at least 1"));
        }
        if config.max_message_bytes < 64 * 1024 {
            return Err(invalid("max_message_bytes must be at least 65536"));
        }
        Ok(config)
    }

    /// The TOML `init` writes: the documented example with the addresses
    /// chosen at init substituted.
    pub fn to_file_text(&self) -> String {
        EXAMPLE
            .replace(
                "listen = \"0.0.0.0:50051\"",
                &format!("listen = \"{}\"", self.listen),
            )
            .replace(
                "enroll_listen = \"0.0.0.0:50052\"",
                &format!("enroll_listen = \"{}\"", self.enroll_listen),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_defaults() {
        let parsed = CollectorConfig::parse(EXAMPLE, Path::new("collector.example.toml")).unwrap();
        assert_eq!(parsed, CollectorConfig::default());
    }

    #[test]
    fn written_file_round_trips() {
        let config = CollectorConfig {
            listen: "127.0.0.1:7000".parse().unwrap(),
            enroll_listen: "127.0.0.1:7001".parse().unwrap(),
            ..CollectorConfig::default()
        };
        let back = CollectorConfig::parse(&config.to_file_text(), Path::new("c.toml")).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "unknown key",
                "listen = \"0.0.0.0:1\"\nbogus = 1\n",
                "line 2",
            ),
            ("bad address", "\n\nlisten = \"nowhere\"\n", "line 3"),
            ("bad syntax", "listen = \n", "line 1"),
        ];
        for (name, text, want) in cases {
            let err = CollectorConfig::parse(text, Path::new("/data/collector.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("/data/collector.toml: "), "{name}: {err}");
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn zero_heartbeat_is_refused() {
        let err =
            CollectorConfig::parse("heartbeat_interval_secs = 0", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("heartbeat_interval_secs"), "{err}");
    }
}
