//! CPU time of another process, read from Linux's per-thread scheduler statistics.
//!
//! `/proc/<pid>/task/<tid>/schedstat` gives each thread's time on a CPU in nanoseconds (the
//! figure getrusage sums, at a finer grain than its clock ticks), so the CPU one short query
//! costs the gateway can be read around that query alone.

use std::path::PathBuf;
use std::time::Duration;

/// A process whose CPU time can be read; `None` off Linux or once it has gone.
#[derive(Debug, Clone)]
pub struct ProcessCpu {
    tasks: PathBuf,
}

impl ProcessCpu {
    /// The process `pid`, if its scheduler statistics can be read.
    pub fn of(pid: u32) -> Option<Self> {
        let cpu = Self {
            tasks: PathBuf::from(format!("/proc/{pid}/task")),
        };
        cpu.total().map(|_| cpu)
    }

    /// CPU time used so far by all of the process's threads.
    pub fn total(&self) -> Option<Duration> {
        let mut nanos: u64 = 0;
        for task in std::fs::read_dir(&self.tasks).ok()? {
            let Ok(task) = task else { continue };
            // A thread that ended between the listing and the read counts nothing more.
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            nanos += first_field(&text)?;
        }
        Some(Duration::from_nanos(nanos))
    }
}

/// Every worker process together: the gateway spreads queries over all of them.
#[derive(Debug, Clone)]
pub struct WorkersCpu(Vec<ProcessCpu>);

impl WorkersCpu {
    /// The processes `pids` whose statistics can be read.
    pub fn of(pids: impl IntoIterator<Item = u32>) -> Self {
        Self(pids.into_iter().filter_map(ProcessCpu::of).collect())
    }

    /// Whether any worker's CPU time can be read.
    pub fn readable(&self) -> bool {
        !self.0.is_empty()
    }

    /// CPU time used so far by all of them.
    pub fn total(&self) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        self.0.iter().map(ProcessCpu::total).sum()
    }
}

/// The first field of a `schedstat` line: nanoseconds spent on a CPU.
fn first_field(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schedstat() {
        assert_eq!(first_field("123456 789 10\n"), Some(123_456));
        assert_eq!(first_field(""), None);
        assert_eq!(first_field("x 1 2"), None);
    }

    #[test]
    fn reads_this_process_and_grows_with_work() {
        let Some(cpu) = ProcessCpu::of(std::process::id()) else {
            // Not Linux: nothing to read.
            return;
        };
        let before = cpu.total().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu.total().unwrap() > before);
    }
}
