//! A child process in its own process group with its output in a log file; the whole group is
//! killed and the child reaped on drop, also when a test panics or a bench run fails.

use anyhow::{bail, Context};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of the log an error carries: enough for Envoy's or VictoriaMetrics' reason to exit.
const ERROR_TAIL_LINES: usize = 20;

/// A started process, killed with its whole process group and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` as the leader of a new process group (so whatever it forks is stopped
    /// with it), stdin closed, stdout and stderr both into `log`.
    ///
    /// Out of our group, it no longer gets a terminal's Ctrl-C, and a test binary or bench
    /// killed without unwinding could not stop it; so the kernel kills it when the thread that
    /// started it ends (`PR_SET_PDEATHSIG`). Start processes from a thread that outlives them
    /// (a test's thread, a runtime's worker), not from a pooled blocking thread.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let file = File::create(log)
            .with_context(|| format!("creating the log {} of {name}", log.display()))?;
        let stdout = file
            .try_clone()
            .with_context(|| format!("cloning the log handle of {name}"))?;
        let program = command.get_program().to_string_lossy().into_owned();
        let parent = libc::pid_t::try_from(std::process::id())
            .context("our own process id does not fit a pid_t")?;
        // SAFETY: the closure runs in the forked child before exec; it makes only the syscalls
        // prctl and getppid, which are async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // We may have died before prctl took effect: then nobody would stop it.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} (`{program}`; is it on PATH?)"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The name it was started under, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Operating-system process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far; empty when the log cannot be read, since the log
    /// only ever explains another failure.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Its exit status once it has exited (`None` while it runs).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails with the log's tail when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => bail!(
                "{} exited with {status}; log tail ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(ERROR_TAIL_LINES)
            ),
            Ok(None) => Ok(()),
            Err(error) => {
                Err(error).with_context(|| format!("checking whether {} runs", self.name))
            }
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`, `HUP`, ...) to the process itself, with the
    /// system `kill` command.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status()
            .with_context(|| format!("running kill -{signal} {pid} ({})", self.name))?;
        if !status.success() {
            bail!("kill -{signal} {pid} ({}) failed: {status}", self.name);
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; its exit code when it exited with one
    /// (`None` when it is still running or was ended by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// User plus system CPU seconds of its process group (it and what it forked), from `/proc`.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::cpu::group_cpu_seconds(self.pid())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(group) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: killpg only sends a signal; it touches no memory of ours. The group id is
            // our child's pid, which the kernel does not hand out again while the child is
            // unreaped or any member of its group lives.
            unsafe {
                libc::killpg(group, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn drop_stops_the_whole_group() {
        let directory = std::env::temp_dir().join(format!("harness-group-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let log = directory.join("sh.log");
        // The shell forks a sleeping grandchild and reports its pid.
        let process = Process::spawn(
            "sh",
            Command::new("sh").args(["-c", "sleep 30 & echo $!; wait"]),
            &log,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let grandchild = loop {
            if let Ok(pid) = process.log().trim().parse::<u32>() {
                break pid;
            }
            assert!(Instant::now() < deadline, "no grandchild pid in the log");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(Path::new(&format!("/proc/{grandchild}")).exists());
        drop(process);
        let deadline = Instant::now() + Duration::from_secs(5);
        // The orphaned grandchild is reaped by init; a zombie counts as gone.
        while std::fs::read_to_string(format!("/proc/{grandchild}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }) {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived the drop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        let directory = std::env::temp_dir().join(format!("harness-orphan-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let log = directory.join("sleep.log");
        // The process is leaked, as when a test binary is killed without unwinding.
        let pid = std::thread::spawn(move || {
            let process = Process::spawn("sleep", Command::new("sleep").arg("30"), &log).unwrap();
            let pid = process.pid();
            std::mem::forget(process);
            pid
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Our own zombie until reaped: waitpid it once it is gone.
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid pointer.
            let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if reaped == pid as libc::pid_t {
                assert!(
                    libc::WIFSIGNALED(status),
                    "sleep exited by itself: {status}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sleep {pid} outlived its starting thread"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn an_exited_process_is_reported_with_its_log() {
        let directory = std::env::temp_dir().join(format!("harness-exit-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let mut process = Process::spawn(
            "false",
            Command::new("sh").args(["-c", "echo broken config; exit 3"]),
            &directory.join("exit.log"),
        )
        .unwrap();
        assert_eq!(process.wait_exit(Duration::from_secs(5)), Some(3));
        let error = process.check_running().unwrap_err().to_string();
        assert!(
            error.contains("false exited") && error.contains("broken config"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_missing_program_names_itself() {
        let log = std::env::temp_dir().join(format!("harness-missing-{}.log", std::process::id()));
        let error = Process::spawn(
            "nothing",
            &mut Command::new("harness-no-such-program"),
            &log,
        )
        .unwrap_err();
        let _ = std::fs::remove_file(&log);
        assert!(
            format!("{error:#}").contains("harness-no-such-program"),
            "{error:#}"
        );
    }
}
