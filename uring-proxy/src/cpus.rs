//! How many workers to start, and whether to pin them: as many as the CPUs this process may
//! use, which is the smaller of its affinity mask and its cgroup's CPU quota (cgroup v2
//! `cpu.max`, cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, the tightest on the way to
//! the root). A sidecar limited to 1 CPU on a 64-core node starts 1 worker, not 64.
//!
//! Workers are pinned only when each can have a core of its own: as many workers as CPUs in
//! the mask, and no quota below that. Under a quota the CPUs are shared with other
//! containers, and pinning every sidecar's worker 0 to CPU 0 would stack them on one core.

use std::path::{Path, PathBuf};

/// The decision, and what it was made from (for the start-up log line and the metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPlan {
    pub workers: usize,
    /// The CPU for each worker, when pinned.
    pub pin: Option<Vec<usize>>,
    /// CPUs in the affinity mask.
    pub allowed: Vec<usize>,
    /// The cgroup CPU quota in CPUs, when one is set.
    pub quota: Option<f64>,
}

/// Plans workers for this process. `requested`: `--workers` or the config's `workers`.
pub fn plan(requested: Option<usize>, pin_wanted: bool) -> WorkerPlan {
    let allowed = crate::sys::allowed_cpus().unwrap_or_default();
    let quota = cgroup_quota(
        Path::new("/proc/self/cgroup"),
        Path::new("/proc/self/mountinfo"),
    );
    decide(requested, pin_wanted, allowed, quota)
}

/// The pure part of [`plan`].
pub fn decide(
    requested: Option<usize>,
    pin_wanted: bool,
    allowed: Vec<usize>,
    quota: Option<f64>,
) -> WorkerPlan {
    let cpus = allowed.len().max(1);
    let by_quota = quota.map_or(cpus, |q| (q.ceil() as usize).clamp(1, cpus));
    let workers = requested.unwrap_or(by_quota).max(1);
    let own_cores = workers == allowed.len() && quota.is_none_or(|q| q + 1e-9 >= workers as f64);
    let pin = (pin_wanted && own_cores).then(|| allowed.clone());
    WorkerPlan {
        workers,
        pin,
        allowed,
        quota,
    }
}

/// A line of `/proc/self/cgroup`: hierarchy id, controllers, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(CgroupLine {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// A cgroup filesystem from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The path within the hierarchy that is mounted (`/` unless in a container).
    pub root: String,
    pub point: PathBuf,
    /// `true` for cgroup2.
    pub v2: bool,
    /// v1 controllers (from the super options).
    pub controllers: Vec<String>,
}

pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|l| {
            // id parent major:minor root point options [optional...] - fstype source super
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let fstype = *post.first()?;
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = if v2 {
                Vec::new()
            } else {
                post.get(2)?.split(',').map(str::to_string).collect()
            };
            Some(CgroupMount {
                root: unescape(pre.get(3)?),
                point: PathBuf::from(unescape(pre.get(4)?)),
                v2,
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes spaces and such as `\040`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&oct, 8) {
                out.push(b as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// `cpu.max`: `max 100000` (no limit) or `150000 100000` (1.5 CPUs).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let q: f64 = quota.parse().ok()?;
    (q > 0.0).then(|| q / period)
}

/// `cpu.cfs_quota_us` (-1: no limit) over `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let q: i64 = quota.trim().parse().ok()?;
    let p: i64 = period.trim().parse().ok()?;
    (q > 0 && p > 0).then(|| q as f64 / p as f64)
}

/// The directory of `path` (a cgroup path as `/proc/self/cgroup` names it) under `mount`.
fn dir_in(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(&mount.root)?
    };
    Some(mount.point.join(rel.trim_start_matches('/')))
}

/// The tightest quota from `dir` up to the mount point.
fn walk_up(mount: &CgroupMount, dir: PathBuf, read: &dyn Fn(&Path) -> Option<f64>) -> Option<f64> {
    let mut best: Option<f64> = None;
    let mut d = Some(dir.as_path());
    while let Some(p) = d {
        if !p.starts_with(&mount.point) {
            break;
        }
        if let Some(q) = read(p) {
            best = Some(best.map_or(q, |b| b.min(q)));
        }
        d = p.parent();
    }
    best
}

/// The CPU quota of this process's cgroups, v2 and v1, whichever is tighter.
pub fn cgroup_quota(proc_cgroup: &Path, mountinfo: &Path) -> Option<f64> {
    let lines = parse_proc_cgroup(&std::fs::read_to_string(proc_cgroup).ok()?);
    let mounts = parse_mountinfo(&std::fs::read_to_string(mountinfo).ok()?);
    let read = |p: &Path, name: &str| std::fs::read_to_string(p.join(name)).ok();
    let mut quotas = Vec::new();
    for line in &lines {
        if line.controllers.is_empty() {
            // The v2 unified hierarchy.
            for m in mounts.iter().filter(|m| m.v2) {
                if let Some(dir) = dir_in(m, &line.path) {
                    let q = walk_up(m, dir, &|p| {
                        read(p, "cpu.max").and_then(|t| parse_cpu_max(&t))
                    });
                    quotas.extend(q);
                }
            }
        } else if line.controllers.iter().any(|c| c == "cpu") {
            for m in mounts
                .iter()
                .filter(|m| !m.v2 && m.controllers.iter().any(|c| c == "cpu"))
            {
                if let Some(dir) = dir_in(m, &line.path) {
                    let q = walk_up(m, dir, &|p| {
                        parse_cfs(
                            &read(p, "cpu.cfs_quota_us")?,
                            &read(p, "cpu.cfs_period_us")?,
                        )
                    });
                    quotas.extend(q);
                }
            }
        }
    }
    quotas.into_iter().reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_follow_the_smaller_of_mask_and_quota() {
        let all = |n: usize| (0..n).collect::<Vec<_>>();
        let p = decide(None, true, all(64), Some(1.0));
        assert_eq!(
            (p.workers, p.pin.is_some()),
            (1, false),
            "1 CPU of 64: 1 worker, unpinned"
        );
        let p = decide(None, true, all(64), Some(2.5));
        assert_eq!((p.workers, p.pin.is_some()), (3, false));
        let p = decide(None, true, all(4), None);
        assert_eq!(
            (p.workers, p.pin),
            (4, Some(all(4))),
            "the whole mask: pinned"
        );
        let p = decide(None, true, vec![1], None);
        assert_eq!(
            (p.workers, p.pin),
            (1, Some(vec![1])),
            "taskset -c 1: pinned to 1"
        );
        let p = decide(None, true, all(2), Some(8.0));
        assert_eq!(
            (p.workers, p.pin.is_some()),
            (2, true),
            "a quota above the mask"
        );
        let p = decide(None, false, all(4), None);
        assert_eq!(p.pin, None, "--no-pin");
        let p = decide(Some(2), true, all(4), None);
        assert_eq!(
            (p.workers, p.pin.is_some()),
            (2, false),
            "fewer workers than CPUs"
        );
        let p = decide(Some(6), true, all(4), Some(0.5));
        assert_eq!(p.workers, 6, "an explicit count wins");
        let p = decide(None, true, vec![], Some(0.1));
        assert_eq!(p.workers, 1);
    }

    #[test]
    fn cgroup_files_parse() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("50000\n", "100000\n"), Some(0.5));
        let lines = parse_proc_cgroup(
            "12:cpu,cpuacct:/kubepods/pod1/c1\n11:memory:/x\n1:name=systemd:/y\n0::/k8s/c1\n",
        );
        assert_eq!(lines[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(lines[0].path, "/kubepods/pod1/c1");
        assert!(lines[3].controllers.is_empty());
        let mounts = parse_mountinfo(
            "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:6 - cgroup2 cgroup2 rw,nsdelegate\n\
             33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct\n\
             40 25 0:35 /kubepods /sys/fs/cgroup/cpu\\040x rw - cgroup cgroup rw,cpu\n\
             22 1 8:1 / / rw - ext4 /dev/sda1 rw\n",
        );
        assert_eq!(mounts.len(), 3);
        assert!(mounts[0].v2);
        assert_eq!(mounts[1].controllers, ["rw", "cpu", "cpuacct"]);
        assert_eq!(mounts[2].root, "/kubepods");
        assert_eq!(mounts[2].point, PathBuf::from("/sys/fs/cgroup/cpu x"));
        assert_eq!(
            dir_in(&mounts[2], "/kubepods/pod1"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu x/pod1"))
        );
        assert_eq!(dir_in(&mounts[2], "/other"), None);
    }
}
