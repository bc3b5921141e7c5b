//! The process's own metrics, in the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …), read from `/proc/self`
//! when `/metrics` is scraped: no thread, no timer, nothing between scrapes. Elsewhere than
//! Linux (development machines) they are left out.

use std::fmt::Write;

/// Linux reports CPU times in `USER_HZ` ticks, which the kernel fixes at 100 on every
/// architecture it exports to user space (`sysconf(_SC_CLK_TCK)`; reading it would need
/// `unsafe`, which this crate forbids).
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self` tells about the process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

/// Appends the process families to a Prometheus text exposition.
pub(super) fn render(out: &mut String) {
    if let Some(stats) = read() {
        write_families(out, &stats);
    }
}

fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| boot_time(&text));
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mut stats = parse_stat(&stat, boot_time?)?;
    stats.resident_bytes = vm_rss_bytes(&status)?;
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64);
    stats.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| max_open_files(&text));
    Some(stats)
}

/// CPU time, virtual size and start time from `/proc/self/stat` (see proc(5)). The command
/// name (field 2) may contain spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str, boot_time: u64) -> Option<ProcessStats> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; utime is field 14, stime 15, starttime 22,
    // vsize 23.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = field(14)? + field(15)?;
    Some(ProcessStats {
        cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
        virtual_bytes: field(23)?,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / TICKS_PER_SECOND,
        ..ProcessStats::default()
    })
}

/// `btime` of `/proc/stat`: when the machine booted, in unix seconds.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, which the kernel gives in kB.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

fn write_families(out: &mut String, stats: &ProcessStats) {
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stats.cpu_seconds,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stats.resident_bytes as f64,
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stats.virtual_bytes as f64,
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        stats.start_time_seconds,
    );
    if let Some(open) = stats.open_fds {
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open as f64,
        );
    }
    if let Some(max) = stats.max_fds {
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may choose.
        let stat = "4242 (pleo (gw) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 \
                    3 0 12345 104857600 4000 18446744073709551615";
        let stats = parse_stat(stat, 1_700_000_000).unwrap();
        assert_eq!(stats.cpu_seconds, 4.0);
        assert_eq!(stats.virtual_bytes, 104_857_600);
        assert_eq!(stats.start_time_seconds, 1_700_000_123.45);
    }

    #[test]
    fn status_and_limits_are_read() {
        assert_eq!(
            vm_rss_bytes("Name:\tpleo-gateway\nVmRSS:\t   18432 kB\nThreads: 3\n"),
            Some(18_874_368)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_is_measured_on_linux() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let mut out = String::new();
        render(&mut out);
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                out.contains(&format!("# TYPE {family} ")),
                "{family}: {out}"
            );
        }
        let stats = read().unwrap();
        assert!(stats.resident_bytes > 1024 * 1024, "{stats:?}");
        assert!(stats.open_fds.unwrap() >= 3, "{stats:?}");
    }
}
