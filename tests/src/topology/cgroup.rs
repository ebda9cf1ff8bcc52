//! cgroup v2 directories for pods (and the parent the capture programs
//! attach to).

use std::{
    fs::{self, File},
    io::Write,
    os::fd::{AsRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::error::{Result, TopologyError};

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup/unified` on
/// hybrid systems like this one, `/sys/fs/cgroup` on unified ones).
pub fn unified_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(TopologyError::io("reading", "/proc/self/mountinfo"))?;
    mountinfo
        .lines()
        .find_map(|line| {
            // "... MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPEROPTS"
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .ok_or(TopologyError::NoCgroup2)
}

/// A cgroup v2 directory made by the harness.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `path` (its parent must exist).
    pub fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).map_err(TopologyError::io("creating cgroup", &path))?;
        Ok(Self { path })
    }

    /// A handle on an existing cgroup directory.
    pub fn open(path: PathBuf) -> Self {
        Self { path }
    }

    /// The cgroup's directory (what cgroup BPF programs attach to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd` start inside this cgroup.
    pub fn confine(&self, cmd: &mut Command) -> Result<()> {
        let procs = self.path.join("cgroup.procs");
        let file: OwnedFd = File::options()
            .write(true)
            .open(&procs)
            .map_err(TopologyError::io("opening", &procs))?
            .into();
        // SAFETY: the closure only calls write(2) on a descriptor opened
        // before the fork; "0" moves the calling (child) process.
        unsafe {
            cmd.pre_exec(move || {
                let rc = libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if rc == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Ok(())
    }

    /// Process ids in this cgroup (not its children).
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.path)
    }
}

fn pids_in(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup tree at `path`, waits for them to go,
/// and removes the directories, deepest first. A missing `path` is fine.
pub fn destroy_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kill = path.join("cgroup.kill");
    if let Ok(mut file) = File::options().write(true).open(&kill) {
        // cgroup.kill (Linux 5.14) SIGKILLs the whole subtree atomically.
        let _ = file.write_all(b"1");
    } else {
        for pid in all_pids(path) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // "populated 0" in cgroup.events: every task has finished exiting (an
    // empty cgroup.procs can come slightly earlier).
    while !all_pids(path).is_empty() || populated(path) {
        if Instant::now() > deadline {
            return Err(TopologyError::Invalid(format!(
                "processes {:?} in cgroup {} survived SIGKILL for 10 s",
                all_pids(path),
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_dirs(path)
}

fn populated(path: &Path) -> bool {
    fs::read_to_string(path.join("cgroup.events"))
        .map(|events| events.lines().any(|line| line == "populated 1"))
        .unwrap_or(false)
}

fn all_pids(path: &Path) -> Vec<i32> {
    let mut pids = pids_in(path);
    for child in subdirs(path) {
        pids.extend(all_pids(&child));
    }
    pids
}

fn subdirs(path: &Path) -> Vec<PathBuf> {
    fs::read_dir(path)
        .map(|dir| {
            dir.filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default()
}

fn remove_dirs(path: &Path) -> Result<()> {
    for child in subdirs(path) {
        remove_dirs(&child)?;
    }
    // A cgroup directory is removed with rmdir even though it lists files.
    // The kernel may still be releasing the last task for a moment (EBUSY).
    let mut attempts = 0;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(TopologyError::Io {
                    action: "removing cgroup",
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}
