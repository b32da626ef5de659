//! A core of its own for the gateway (`quiver bench --pin-gateway`), as on Kubernetes, where the
//! gateway runs in a pod of its own. On a small machine the gateway otherwise shares cores with
//! the workers, whose scans evict its caches while it waits for their answers, so a long query
//! pays for the gateway's cold caches on top of the hop itself.

use std::io;

/// How the bench split the machine's cores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pinning {
    /// The gateway's core.
    pub gateway: Vec<usize>,
    /// The workers' cores, shared with the bench's own client and in-process engines.
    pub others: Vec<usize>,
}

impl Pinning {
    /// The first core this process may use for the gateway, the rest for everything else.
    pub fn split() -> anyhow::Result<Self> {
        let cpus = allowed()?;
        match cpus.split_first() {
            Some((&first, rest)) if !rest.is_empty() => Ok(Self {
                gateway: vec![first],
                others: rest.to_vec(),
            }),
            _ => anyhow::bail!(
                "--pin-gateway needs at least two cores; this process may use {}",
                cpus.len()
            ),
        }
    }
}

impl std::fmt::Display for Pinning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |cpus: &[usize]| {
            cpus.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "gateway on CPU {}, workers and client on CPU {}",
            list(&self.gateway),
            list(&self.others)
        )
    }
}

#[cfg(target_os = "linux")]
mod affinity {
    use std::io;

    use rustix::process::Pid;
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

    pub fn allowed() -> io::Result<Vec<usize>> {
        let set = sched_getaffinity(None)?;
        Ok((0..CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect())
    }

    /// Every thread of `pid` (threads it starts later inherit the mask of the one starting them).
    pub fn pin_process(pid: u32, cpus: &[usize]) -> io::Result<()> {
        let mut set = CpuSet::new();
        for &cpu in cpus {
            set.set(cpu);
        }
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let tid = task?.file_name().to_string_lossy().parse::<i32>().ok();
            let Some(tid) = tid.and_then(Pid::from_raw) else {
                continue;
            };
            match sched_setaffinity(Some(tid), &set) {
                // A thread that ended since the listing needs no pinning.
                Err(rustix::io::Errno::SRCH) => {}
                other => other?,
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod affinity {
    use std::io;

    pub fn allowed() -> io::Result<Vec<usize>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pinning needs Linux",
        ))
    }

    pub fn pin_process(_pid: u32, _cpus: &[usize]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pinning needs Linux",
        ))
    }
}

/// The CPUs this process may run on.
pub fn allowed() -> io::Result<Vec<usize>> {
    affinity::allowed()
}

/// Restricts every thread of process `pid` to `cpus`.
pub fn pin_process(pid: u32, cpus: &[usize]) -> io::Result<()> {
    affinity::pin_process(pid, cpus)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// This test's own process pinned to one of its CPUs (a thread started before included),
    /// then given them all back.
    #[test]
    fn pins_every_thread_of_a_process() {
        let cpus = allowed().unwrap();
        assert!(!cpus.is_empty());
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            wait.recv().unwrap();
            allowed().unwrap()
        });
        pin_process(std::process::id(), &cpus[..1]).unwrap();
        go.send(()).unwrap();
        assert_eq!(helper.join().unwrap(), cpus[..1]);
        assert_eq!(allowed().unwrap(), cpus[..1]);
        pin_process(std::process::id(), &cpus).unwrap();
        assert_eq!(allowed().unwrap(), cpus);
    }
}
