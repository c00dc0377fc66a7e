//! What ds-load needs from the operating system: a high enough open-files
//! limit for thousands of connections, a process's resident memory (VmRSS
//! from `/proc/PID/status`) for the fan-out scenario, and a process's CPU
//! time (`/proc/PID/stat`) for the server's cost per request.

/// Why a process's memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot read /proc/{pid}/status: {cause}")]
    Read { pid: u32, cause: std::io::Error },
    #[error("/proc/{pid}/status has no readable VmRSS line")]
    NoRss { pid: u32 },
}

/// Why a process's CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read /proc/{pid}/stat: {cause}")]
    Read { pid: u32, cause: std::io::Error },
    #[error("/proc/{pid}/stat has no readable utime and stime fields")]
    Malformed { pid: u32 },
    #[error("the kernel reported no clock tick rate")]
    TickRate,
}

/// CPU time a process has used so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTime {
    pub user_s: f64,
    pub system_s: f64,
}

/// The CPU time process `pid` has used so far (Linux).
pub fn cpu_time(pid: u32) -> Result<CpuTime, CpuError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|cause| CpuError::Read { pid, cause })?;
    let (user, system) = parse_cpu_ticks(&stat).ok_or(CpuError::Malformed { pid })?;
    let ticks_per_s = match rustix::param::clock_ticks_per_second() {
        0 => return Err(CpuError::TickRate),
        ticks => ticks as f64,
    };
    Ok(CpuTime {
        user_s: user as f64 / ticks_per_s,
        system_s: system as f64 / ticks_per_s,
    })
}

/// `utime` and `stime` (fields 14 and 15, in clock ticks) of a
/// `/proc/PID/stat` line. The command name (field 2) is in parentheses and
/// may hold spaces and parentheses itself, so fields are counted after its
/// last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

/// Raises this process's soft open-files limit as far as the hard limit
/// allows; returns the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The resident set size of process `pid`, in bytes.
pub fn resident_bytes(pid: u32) -> Result<u64, MemoryError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|cause| MemoryError::Read { pid, cause })?;
    parse_vm_rss(&status).ok_or(MemoryError::NoRss { pid })
}

/// The `VmRSS:   123 kB` line of a `/proc/PID/status` text, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let multiplier = match fields.next() {
        Some("kB") | None => 1024,
        Some("mB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(value * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tstream-server\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn parses_cpu_ticks_after_the_command_name() {
        let stat = "4242 (stream) (x) server) S 1 4242 4242 0 -1 4194560 \
                    100 0 0 0 1234 567 0 0 20 0 3 0 500 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some((1234, 567)));
        assert_eq!(parse_cpu_ticks("4242 (server) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let total = |t: CpuTime| t.user_s + t.system_s;
        let before = total(cpu_time(std::process::id()).unwrap());
        // Spin until the kernel's tick-granular count moves; a shared
        // machine may give this thread little of the wall-clock time.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while total(cpu_time(std::process::id()).unwrap()) <= before {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "CPU time did not grow"
            );
        }
    }

    #[test]
    fn reads_own_memory_and_raises_limit() {
        let rss = resident_bytes(std::process::id()).unwrap();
        assert!(rss > 0);
        assert!(raise_open_files_limit().unwrap() > 0);
    }
}
