//! Host facts and metrics read from Linux `/proc` and `/sys`, plus the
//! standard `df` and `ip` commands.
//!
//! Everything here is best-effort: a missing file or command yields empty or
//! zero values, never an error or a panic. The parsers are small pure
//! functions over `&str` so they can be tested on literal samples.

use std::collections::HashSet;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// A mounted, disk-backed filesystem.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disk {
    /// Mount point.
    pub mount: String,
    /// Filesystem type (`ext4`, `xfs`, ...).
    pub fs_type: String,
    /// Filesystem size in bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
}

/// Mostly static facts about the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Facts {
    /// Kernel hostname.
    pub hostname: String,
    /// `PRETTY_NAME` from os-release, or `"linux"`.
    pub os: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// CPU architecture the agent was built for.
    pub arch: String,
    /// First `model name` in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Number of CPUs available to the agent.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Disk-backed filesystems.
    pub disks: Vec<Disk>,
    /// Non-loopback, non-link-local addresses as `addr/prefix`.
    pub addresses: Vec<String>,
    /// Boot time, seconds since the Unix epoch.
    pub boot_time_s: i64,
}

/// Collects the host facts.
pub fn facts() -> Facts {
    let os = parse_os_release(&read("/etc/os-release"))
        .or_else(|| parse_os_release(&read("/usr/lib/os-release")))
        .unwrap_or_else(|| "linux".to_owned());
    let cpuinfo = read("/proc/cpuinfo");
    let cpus = std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or_else(|| count_processors(&cpuinfo));
    Facts {
        hostname: read("/proc/sys/kernel/hostname").trim().to_owned(),
        os,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpu_model: parse_cpu_model(&cpuinfo).unwrap_or_default(),
        cpus,
        memory_bytes: parse_meminfo(&read("/proc/meminfo")).0,
        disks: disk_table(),
        addresses: addresses(),
        boot_time_s: parse_boot_time(&read("/proc/stat")).unwrap_or(0),
    }
}

/// Space used on one filesystem.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiskUsage {
    /// Mount point.
    pub mount: String,
    /// Bytes in use (size minus available).
    pub used_bytes: u64,
    /// Filesystem size in bytes.
    pub total_bytes: u64,
}

/// Cumulative traffic counters of one network interface.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetCounters {
    /// Interface name.
    pub interface: String,
    /// Bytes received since the interface came up.
    pub rx_bytes: u64,
    /// Bytes sent since the interface came up.
    pub tx_bytes: u64,
}

/// One metrics sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// When the sample was taken, Unix milliseconds.
    pub at_ms: i64,
    /// CPU busy share since the previous sample, 0..=100.
    pub cpu_percent: f64,
    /// 1-minute load average.
    pub load1: f64,
    /// 5-minute load average.
    pub load5: f64,
    /// 15-minute load average.
    pub load15: f64,
    /// `MemTotal` in bytes.
    pub memory_total_bytes: u64,
    /// `MemAvailable` in bytes.
    pub memory_available_bytes: u64,
    /// Usage of the disk-backed filesystems.
    pub disks: Vec<DiskUsage>,
    /// Counters of every interface except `lo`.
    pub net: Vec<NetCounters>,
}

/// Keeps the previous /proc/stat CPU counters so cpu_percent is the busy share since the last sample (0 on the first call).
#[derive(Debug, Default)]
pub struct Sampler {
    /// `(busy, total)` jiffies at the previous sample.
    prev: Option<(u64, u64)>,
}

impl Sampler {
    /// Creates a sampler with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a sample; `cpu_percent` is 0 on the first call.
    pub fn sample(&mut self) -> Sample {
        let cpu = read("/proc/stat")
            .lines()
            .find(|line| line.starts_with("cpu "))
            .and_then(parse_cpu_line);
        let cpu_percent = match (self.prev, cpu) {
            (Some(prev), Some(current)) => busy_percent(prev, current),
            _ => 0.0,
        };
        if cpu.is_some() {
            self.prev = cpu;
        }
        let (load1, load5, load15) = parse_loadavg(&read("/proc/loadavg")).unwrap_or_default();
        let (memory_total_bytes, memory_available_bytes) = parse_meminfo(&read("/proc/meminfo"));
        let disks = disk_table()
            .into_iter()
            .map(|disk| DiskUsage {
                used_bytes: disk.total_bytes.saturating_sub(disk.available_bytes),
                total_bytes: disk.total_bytes,
                mount: disk.mount,
            })
            .collect();
        Sample {
            at_ms: now_ms(),
            cpu_percent,
            load1,
            load5,
            load15,
            memory_total_bytes,
            memory_available_bytes,
            disks,
            net: parse_net_dev(&read("/proc/net/dev")),
        }
    }
}

/// Busy share between two `(busy, total)` jiffy readings, clamped to 0..=100.
fn busy_percent(prev: (u64, u64), current: (u64, u64)) -> f64 {
    let busy = current.0.saturating_sub(prev.0);
    let total = current.1.saturating_sub(prev.1);
    if total == 0 {
        return 0.0;
    }
    (100.0 * busy as f64 / total as f64).clamp(0.0, 100.0)
}

// ---------------------------------------------------------------------------
// Gathering helpers (touch the system).
// ---------------------------------------------------------------------------

/// Reads a file to a string, empty on any error.
fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Unix time in milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Sizes of the disk-backed filesystems, via `df`; shared by [`facts`] and
/// [`Sampler::sample`]. Empty on any failure.
fn disk_table() -> Vec<Disk> {
    let mounts_text = read("/proc/self/mounts");
    let mut cmd = Command::new("df");
    cmd.env("LC_ALL", "C")
        .args(["-B1", "--output=target,fstype,size,avail"]);
    if mounts_text.is_empty() {
        // No mount table: let df enumerate, minus the obvious pseudo filesystems.
        cmd.args(["-x", "tmpfs", "-x", "devtmpfs", "-x", "squashfs"]);
    } else {
        // Ask df only about real local filesystems, so it never stats network
        // or pseudo mounts (a hung NFS server would block it).
        let mut seen = HashSet::new();
        let mounts: Vec<String> = parse_mounts(&mounts_text)
            .into_iter()
            .filter(|(mount, fs_type)| is_real_fs(fs_type, mount))
            // Skip file bind mounts (containers mount /etc/hosts and friends).
            .filter(|(mount, _)| std::fs::metadata(mount).is_ok_and(|m| m.is_dir()))
            .filter_map(|(mount, _)| seen.insert(mount.clone()).then_some(mount))
            .collect();
        if mounts.is_empty() {
            return Vec::new();
        }
        cmd.arg("--").args(mounts);
    }
    // df exits non-zero if any single mount fails; the rest of stdout is still good.
    let Ok(output) = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output() else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    parse_df(&String::from_utf8_lossy(&output.stdout))
        .into_iter()
        .filter(|disk| is_real_fs(&disk.fs_type, &disk.mount))
        .filter(|disk| seen.insert(disk.mount.clone()))
        .collect()
}

/// Addresses from `ip -o addr show`; empty if `ip` is missing or fails.
fn addresses() -> Vec<String> {
    let Ok(output) = Command::new("ip")
        .args(["-o", "addr", "show"])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    if !output.status.success() {
        return Vec::new();
    }
    parse_ip_addr(&String::from_utf8_lossy(&output.stdout))
}

/// Whether a filesystem type at a mount point counts as a disk.
fn is_real_fs(fs_type: &str, mount: &str) -> bool {
    match fs_type {
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "zfs" | "vfat" | "f2fs" => true,
        "overlay" => mount == "/",
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Pure parsers.
// ---------------------------------------------------------------------------

/// `PRETTY_NAME` from an os-release file, unquoted.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("PRETTY_NAME=")?.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value)
            .trim();
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// First `model name` in `/proc/cpuinfo`.
pub fn parse_cpu_model(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// Number of `processor` entries in `/proc/cpuinfo` (at least 1).
pub fn count_processors(text: &str) -> u32 {
    let count = text
        .lines()
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(key, _)| key.trim() == "processor")
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX).max(1)
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Option<i64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime")?.trim().parse().ok())
}

/// `(MemTotal, MemAvailable)` in bytes from `/proc/meminfo`; zero when
/// missing. Kernels without `MemAvailable` get `MemFree + Buffers + Cached`.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let (mut total, mut available) = (0u64, None);
    let (mut free, mut buffers, mut cached) = (0u64, 0u64, 0u64);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let bytes = rest
            .split_whitespace()
            .next()
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_mul(1024);
        match key.trim() {
            "MemTotal" => total = bytes,
            "MemAvailable" => available = Some(bytes),
            "MemFree" => free = bytes,
            "Buffers" => buffers = bytes,
            "Cached" => cached = bytes,
            _ => {}
        }
    }
    let available =
        available.unwrap_or_else(|| free.saturating_add(buffers).saturating_add(cached));
    (total, available)
}

/// `(load1, load5, load15)` from `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(l1)), Some(Ok(l5)), Some(Ok(l15))) => Some((l1, l5, l15)),
        _ => None,
    }
}

/// `(busy, total)` jiffies from the aggregate `cpu ` line of `/proc/stat`.
///
/// Total is the sum of user, nice, system, idle, iowait, irq, softirq and
/// steal; guest times are left out because the kernel already counts them in
/// user and nice. Idle is idle + iowait.
pub fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values = fields
        .take(8)
        .map(str::parse::<u64>)
        .collect::<Result<Vec<u64>, _>>()
        .ok()?;
    if values.len() < 4 {
        return None;
    }
    let total = values.iter().fold(0u64, |acc, v| acc.saturating_add(*v));
    let idle = values[3].saturating_add(values.get(4).copied().unwrap_or(0));
    Some((total.saturating_sub(idle), total))
}

/// Per-interface byte counters from `/proc/net/dev`, skipping `lo`.
pub fn parse_net_dev(text: &str) -> Vec<NetCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name == "lo" {
                return None;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(NetCounters {
                interface: name.to_owned(),
                rx_bytes: fields.first()?.parse().ok()?,
                tx_bytes: fields.get(8)?.parse().ok()?,
            })
        })
        .collect()
}

/// Rows of `df -B1 --output=target,fstype,size,avail`; the header and any
/// malformed row are skipped. Columns are taken from the right so mount
/// points containing spaces survive.
pub fn parse_df(text: &str) -> Vec<Disk> {
    text.lines().filter_map(parse_df_row).collect()
}

/// One `df` row, see [`parse_df`].
fn parse_df_row(line: &str) -> Option<Disk> {
    let (rest, avail) = split_last_field(line)?;
    let (rest, size) = split_last_field(rest)?;
    let (target, fs_type) = split_last_field(rest)?;
    let mount = target.trim();
    if mount.is_empty() {
        return None;
    }
    Some(Disk {
        mount: mount.to_owned(),
        fs_type: fs_type.to_owned(),
        total_bytes: size.parse().ok()?,
        available_bytes: avail.parse().ok()?,
    })
}

/// Splits `"a b  c"` into `("a b", "c")`, ignoring trailing blanks.
fn split_last_field(text: &str) -> Option<(&str, &str)> {
    let (rest, last) = text.trim_end().rsplit_once([' ', '\t'])?;
    (!last.is_empty()).then_some((rest.trim_end(), last))
}

/// `(mount point, fs type)` pairs from `/proc/self/mounts`, with the octal
/// escapes (`\040` for a space, ...) decoded.
pub fn parse_mounts(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount = fields.next()?;
            let fs_type = fields.next()?;
            Some((unescape_mount(mount), fs_type.to_owned()))
        })
        .collect()
}

/// Decodes the `\NNN` octal escapes of a mount table field.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(byte) = bytes.get(i + 1..i + 4).and_then(octal_byte)
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Three octal digits to a byte.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u16 = 0;
    for &digit in digits {
        if !(b'0'..=b'7').contains(&digit) {
            return None;
        }
        value = value * 8 + u16::from(digit - b'0');
    }
    u8::try_from(value).ok()
}

/// `addr/prefix` strings from `ip -o addr show`, skipping `lo`, loopback and
/// IPv6 link-local (`fe80::/10`) addresses. Duplicates are dropped.
pub fn parse_ip_addr(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_index), Some(ifname), Some(family), Some(cidr)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let ifname = ifname.trim_end_matches(':');
        let ifname = ifname.split_once('@').map_or(ifname, |(name, _)| name);
        if ifname == "lo" || !matches!(family, "inet" | "inet6") {
            continue;
        }
        let addr = cidr.split_once('/').map_or(cidr, |(addr, _)| addr);
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        let link_local_v6 = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if ip.is_loopback() || link_local_v6 {
            continue;
        }
        if !out.iter().any(|known| known == cidr) {
            out.push(cidr.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            parse_os_release(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME='Alpine Linux v3.20'\n").as_deref(),
            Some("Alpine Linux v3.20")
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME=Arch\n").as_deref(),
            Some("Arch")
        );
        assert_eq!(parse_os_release("ID=debian\n"), None);
        assert_eq!(parse_os_release("PRETTY_NAME=\"\"\n"), None);
        assert_eq!(parse_os_release(""), None);
    }

    #[test]
    fn cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n\n\
                    processor\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\n";
        assert_eq!(
            parse_cpu_model(text).as_deref(),
            Some("AMD EPYC 7763 64-Core Processor")
        );
        assert_eq!(count_processors(text), 2);
        assert_eq!(parse_cpu_model("processor : 0\n"), None);
        assert_eq!(count_processors(""), 1);
    }

    #[test]
    fn boot_time() {
        let text = "cpu  1 2 3 4\nintr 12345\nctxt 999\nbtime 1700000000\nprocesses 42\n";
        assert_eq!(parse_boot_time(text), Some(1_700_000_000));
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1234567 kB\nMemAvailable:   8000000 kB\nBuffers:          100000 kB\n";
        assert_eq!(parse_meminfo(text), (16_318_412 * 1024, 8_000_000 * 1024));
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 30 kB\n";
        assert_eq!(parse_meminfo(old), (1000 * 1024, 150 * 1024));
        assert_eq!(parse_meminfo(""), (0, 0));
    }

    #[test]
    fn loadavg() {
        assert_eq!(
            parse_loadavg("0.87 0.79 1.12 3/110 31895\n"),
            Some((0.87, 0.79, 1.12))
        );
        assert_eq!(parse_loadavg("0.5 oops"), None);
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn cpu_line() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let line = "cpu  100 0 50 800 50 0 0 0 30 0";
        assert_eq!(parse_cpu_line(line), Some((150, 1000)));
        assert_eq!(parse_cpu_line("cpu  1 2 3 4"), Some((6, 10)));
        assert_eq!(parse_cpu_line("cpu0 100 0 50 800 50 0 0 0"), None);
        assert_eq!(parse_cpu_line("cpu 1 2"), None);
        assert_eq!(parse_cpu_line("cpu 1 x 3 4"), None);
        assert_eq!(parse_cpu_line(""), None);
    }

    #[test]
    fn cpu_percent() {
        assert!((busy_percent((100, 1000), (150, 1100)) - 50.0).abs() < 1e-9);
        assert!(busy_percent((100, 1000), (100, 1000)).abs() < 1e-9);
        // Counters going backwards never yield a negative or >100 value.
        assert!(busy_percent((200, 1000), (100, 1100)).abs() < 1e-9);
        assert!((busy_percent((0, 0), (500, 100)) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 3316 724    0    0    0     0          0         0 3316 724    0    0    0     0       0          0\n  \
eth0:1234 10 0 0 0 0 0 0 5678 20 0 0 0 0 0 0\n  \
wlan0: 42 1 0 0 0 0 0 0 24 1 0 0 0 0 0 0\n";
        assert_eq!(
            parse_net_dev(text),
            [
                NetCounters {
                    interface: "eth0".into(),
                    rx_bytes: 1234,
                    tx_bytes: 5678
                },
                NetCounters {
                    interface: "wlan0".into(),
                    rx_bytes: 42,
                    tx_bytes: 24
                },
            ]
        );
        assert!(parse_net_dev("").is_empty());
    }

    #[test]
    fn df() {
        let text = "Mounted on Type    1B-blocks       Avail\n\
                    /          ext4 270553174016 57381396480\n\
                    /mnt/my disk vfat 1000 400   \n\
                    /boot/efi  vfat    535805952   529707008\n\
                    garbage\n";
        assert_eq!(
            parse_df(text),
            [
                Disk {
                    mount: "/".into(),
                    fs_type: "ext4".into(),
                    total_bytes: 270_553_174_016,
                    available_bytes: 57_381_396_480,
                },
                Disk {
                    mount: "/mnt/my disk".into(),
                    fs_type: "vfat".into(),
                    total_bytes: 1000,
                    available_bytes: 400,
                },
                Disk {
                    mount: "/boot/efi".into(),
                    fs_type: "vfat".into(),
                    total_bytes: 535_805_952,
                    available_bytes: 529_707_008,
                },
            ]
        );
        assert!(parse_df("").is_empty());
    }

    #[test]
    fn mounts() {
        let text = "proc /proc proc rw,relatime 0 0\n\
                    /dev/vda / ext4 rw,relatime 0 0\n\
                    /dev/sdb1 /mnt/my\\040disk vfat rw 0 0\n\
                    tmpfs /run tmpfs rw 0 0\n";
        let mounts = parse_mounts(text);
        assert_eq!(
            mounts,
            [
                ("/proc".to_owned(), "proc".to_owned()),
                ("/".to_owned(), "ext4".to_owned()),
                ("/mnt/my disk".to_owned(), "vfat".to_owned()),
                ("/run".to_owned(), "tmpfs".to_owned()),
            ]
        );
        let real: Vec<&str> = mounts
            .iter()
            .filter(|(mount, fs)| is_real_fs(fs, mount))
            .map(|(mount, _)| mount.as_str())
            .collect();
        assert_eq!(real, ["/", "/mnt/my disk"]);
        assert!(is_real_fs("overlay", "/"));
        assert!(!is_real_fs("overlay", "/var/lib/docker/overlay2/x/merged"));
        assert_eq!(unescape_mount("a\\134b\\9xy\\"), "a\\b\\9xy\\");
    }

    #[test]
    fn ip_addr() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever\n\
4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
4: eth0    inet6 fd00::2/64 scope global nodad \\       valid_lft forever preferred_lft forever\n\
4: eth0    inet6 fe80::fc:ff:fe00:1/64 scope link \\       valid_lft forever preferred_lft forever\n\
5: veth1@if4    inet 10.1.0.1/16 scope global veth1\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(
            parse_ip_addr(text),
            ["192.0.2.2/24", "fd00::2/64", "10.1.0.1/16"]
        );
        assert!(parse_ip_addr("").is_empty());
    }
}
