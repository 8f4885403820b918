//! Device facts from the OS (sysinfo plus a few Linux files): what the
//! collector shows about the machine and what identifies it at enrolment.

use std::path::{Path, PathBuf};

use hallmonitor_proto::v1;
use sysinfo::{Disks, System};

/// Where facts come from; tests point these at fixture files.
#[derive(Clone, Debug)]
pub struct FactSources {
    /// Overrides the machine id (config `machine_id`).
    pub machine_id_override: String,
    pub machine_id_files: Vec<PathBuf>,
    pub serial_file: PathBuf,
    pub sys_block: PathBuf,
}

impl Default for FactSources {
    fn default() -> Self {
        FactSources {
            machine_id_override: String::new(),
            machine_id_files: vec!["/etc/machine-id".into(), "/var/lib/dbus/machine-id".into()],
            serial_file: "/sys/class/dmi/id/product_serial".into(),
            sys_block: "/sys/class/block".into(),
        }
    }
}

/// Collects the facts. A fact the OS will not tell is left empty rather
/// than failing the whole report.
pub fn collect(sources: &FactSources) -> v1::DeviceFacts {
    let (cpu_model, cpu_cores, memory_total_bytes, memory_available_bytes) = match System::new() {
        Ok(mut system) => {
            system.refresh_memory();
            system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
            let model = system
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_owned())
                .unwrap_or_default();
            (
                model,
                system.cpus().len() as u32,
                system.total_memory(),
                system.available_memory(),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read CPU and memory facts");
            (String::new(), 0, 0, 0)
        }
    };
    let disks = Disks::new_with_refreshed_list()
        .map(|disks| {
            disks
                .iter()
                .filter(|d| !is_pseudo(&d.file_system().to_string_lossy()))
                .map(|d| {
                    let name = d.name().to_string_lossy().into_owned();
                    v1::Disk {
                        encryption: encryption_of(&name, &sources.sys_block) as i32,
                        name,
                        mount_point: d.mount_point().to_string_lossy().into_owned(),
                        file_system: d.file_system().to_string_lossy().into_owned(),
                        total_bytes: d.total_space(),
                        available_bytes: d.available_space(),
                        removable: d.is_removable(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    v1::DeviceFacts {
        hostname: System::host_name().unwrap_or_default(),
        os_name: System::name().unwrap_or_default(),
        os_version: System::os_version().unwrap_or_default(),
        kernel_version: System::kernel_version().unwrap_or_default(),
        machine_id: machine_id(sources),
        serial_number: serial_number(&sources.serial_file),
        uptime_secs: uptime_secs(),
        cpu_model,
        cpu_cores,
        memory_total_bytes,
        memory_available_bytes,
        disks,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        architecture: System::cpu_arch(),
    }
}

pub fn uptime_secs() -> u64 {
    System::uptime().unwrap_or_default()
}

/// The facts that identify a change worth reporting: everything but the
/// counters that move all the time (uptime, free memory and disk space).
pub fn stable_view(f: &v1::DeviceFacts) -> v1::DeviceFacts {
    let mut f = f.clone();
    f.uptime_secs = 0;
    f.memory_available_bytes = 0;
    for d in &mut f.disks {
        d.available_bytes = 0;
    }
    f
}

fn is_pseudo(fs: &str) -> bool {
    matches!(
        fs,
        "overlay"
            | "tmpfs"
            | "squashfs"
            | "devtmpfs"
            | "proc"
            | "sysfs"
            | "ramfs"
            | "fuse.snapfuse"
    )
}

fn machine_id(sources: &FactSources) -> String {
    if !sources.machine_id_override.trim().is_empty() {
        return sources.machine_id_override.trim().to_owned();
    }
    sources
        .machine_id_files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_default()
}

/// The DMI serial, unless it is one of the placeholders vendors ship.
fn serial_number(path: &Path) -> String {
    let serial = std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned();
    let placeholder = [
        "",
        "0",
        "None",
        "Default string",
        "To be filled by O.E.M.",
        "System Serial Number",
        "Not Specified",
    ];
    if placeholder.iter().any(|p| p.eq_ignore_ascii_case(&serial)) {
        String::new()
    } else {
        serial
    }
}

/// Linux: a block device is encrypted when it, or a device it is built on
/// (LVM on LUKS, say), is a dm-crypt target. A plain partition is reported
/// not encrypted; self-encrypting drives are invisible to the OS and so
/// show as not encrypted too. Non-device sources (network shares) are
/// unknown.
pub fn encryption_of(device: &str, sys_block: &Path) -> v1::Encryption {
    let Some(path) = device.strip_prefix("/dev/").map(|_| Path::new(device)) else {
        return v1::Encryption::Unknown;
    };
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Some(name) = resolved.file_name().and_then(|n| n.to_str()) else {
        return v1::Encryption::Unknown;
    };
    if !sys_block.join(name).exists() {
        return v1::Encryption::Unknown;
    }
    if is_dm_crypt(name, sys_block, 0) {
        v1::Encryption::Encrypted
    } else {
        v1::Encryption::NotEncrypted
    }
}

fn is_dm_crypt(name: &str, sys_block: &Path, depth: u32) -> bool {
    if depth > 8 {
        return false;
    }
    let dir = sys_block.join(name);
    let uuid = std::fs::read_to_string(dir.join("dm/uuid")).unwrap_or_default();
    if uuid.starts_with("CRYPT-") {
        return true;
    }
    let Ok(slaves) = std::fs::read_dir(dir.join("slaves")) else {
        return false;
    };
    slaves.filter_map(Result::ok).any(|s| {
        s.file_name()
            .to_str()
            .is_some_and(|n| is_dm_crypt(n, sys_block, depth + 1))
    })
}

/// Where facts come from under `config` (its machine id override).
pub fn sources_for(config: &crate::config::AgentConfig) -> FactSources {
    FactSources {
        machine_id_override: config.machine_id.clone(),
        ..FactSources::default()
    }
}

/// The device's facts now, read off the async runtime.
pub async fn collect_for(config: &crate::config::AgentConfig) -> v1::DeviceFacts {
    let sources = sources_for(config);
    tokio::task::spawn_blocking(move || collect(&sources))
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake /sys/class/block: vda1 plain, dm-0 LUKS on vda2, dm-1 LVM on dm-0.
    fn fake_sys() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path();
        fs::create_dir_all(b.join("vda1")).unwrap();
        fs::create_dir_all(b.join("vda2")).unwrap();
        fs::create_dir_all(b.join("dm-0/dm")).unwrap();
        fs::write(b.join("dm-0/dm/uuid"), "CRYPT-LUKS2-abc-root\n").unwrap();
        fs::create_dir_all(b.join("dm-0/slaves/vda2")).unwrap();
        fs::create_dir_all(b.join("dm-1/dm")).unwrap();
        fs::write(b.join("dm-1/dm/uuid"), "LVM-xyz\n").unwrap();
        fs::create_dir_all(b.join("dm-1/slaves/dm-0")).unwrap();
        fs::create_dir_all(b.join("dm-2/dm")).unwrap();
        fs::write(b.join("dm-2/dm/uuid"), "LVM-plain\n").unwrap();
        fs::create_dir_all(b.join("dm-2/slaves/vda1")).unwrap();
        dir
    }

    #[test]
    fn dm_crypt_is_found_through_layers() {
        let sys = fake_sys();
        let cases = [
            ("plain partition", "/dev/vda1", v1::Encryption::NotEncrypted),
            ("luks mapping", "/dev/dm-0", v1::Encryption::Encrypted),
            ("lvm on luks", "/dev/dm-1", v1::Encryption::Encrypted),
            ("lvm on plain", "/dev/dm-2", v1::Encryption::NotEncrypted),
            ("unknown device", "/dev/nvme9n9", v1::Encryption::Unknown),
            ("network share", "server:/export", v1::Encryption::Unknown),
        ];
        for (name, device, want) in cases {
            assert_eq!(encryption_of(device, sys.path()), want, "{name}");
        }
    }

    #[test]
    fn placeholder_serials_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial");
        fs::write(&path, "To be filled by O.E.M.\n").unwrap();
        assert_eq!(serial_number(&path), "");
        fs::write(&path, "PF3ABC12\n").unwrap();
        assert_eq!(serial_number(&path), "PF3ABC12");
        assert_eq!(serial_number(&dir.path().join("missing")), "");
    }

    #[test]
    fn collects_this_machine() {
        let sources = FactSources {
            machine_id_override: "test-machine".into(),
            ..FactSources::default()
        };
        let facts = collect(&sources);
        assert_eq!(facts.machine_id, "test-machine");
        assert!(!facts.hostname.is_empty());
        assert!(facts.memory_total_bytes > 0);
        assert!(facts.cpu_cores > 0);
        assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn stable_view_ignores_moving_counters() {
        let sources = FactSources {
            machine_id_override: "m".into(),
            ..FactSources::default()
        };
        let mut a = collect(&sources);
        let mut b = a.clone();
        b.uptime_secs += 100;
        b.memory_available_bytes /= 2;
        assert_eq!(stable_view(&a), stable_view(&b));
        a.hostname.push('x');
        assert_ne!(stable_view(&a), stable_view(&b));
    }
}
