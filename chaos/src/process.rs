//! Servers started as child processes of this binary (`concord coordinator`, `concord
//! participant`), shared by `concord demo` and `concord chaos`.
//!
//! Every server is started with `--stop-on-stdin-eof` and a pipe on its stdin that we hold for
//! its life, so if we die in any way (even SIGKILL) the pipe closes and the server stops. Each
//! runs in its own process group (a Ctrl-C in the terminal reaches only us), and
//! `kill_on_drop` is the backstop if we fail before stopping it. Every signal goes to the
//! server's own pid, and the child is never reaped before we are done with it, so the pid
//! cannot be reused meanwhile.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a server may take to print `listening on ADDR`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to start one server.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// For messages: `participant alpha`, `coordinator`.
    pub label: String,
    /// The participant's name, or `coordinator`.
    pub name: String,
    /// The `concord` binary.
    pub exe: PathBuf,
    /// Its arguments (`--stop-on-stdin-eof` is added).
    pub args: Vec<OsString>,
    /// Extra environment variables (every inherited `CONCORD_*` variable is removed: the
    /// arguments and these are the whole configuration).
    pub env: Vec<(String, String)>,
    /// Where its stderr (its log) is appended.
    pub log: PathBuf,
}

/// One running server.
#[derive(Debug)]
pub struct Server {
    label: String,
    name: String,
    /// Where it listens, from its `listening on` line.
    address: SocketAddr,
    /// The process; never reaped until we stop it, so its pid cannot be reused meanwhile.
    child: Child,
    /// The write end of its stdin, held for its life (see the module docs).
    lifeline: Option<tokio::process::ChildStdin>,
    log: PathBuf,
}

impl Server {
    /// For messages: `participant alpha`, `coordinator`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The participant's name, or `coordinator`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its pid (None once reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `kill -SIGNAL` to its pid (`STOP`, `CONT`, `TERM`, ...). Fails if it has exited.
    pub async fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            anyhow::bail!("the {} has exited ({status})", self.label);
        }
        // Not reaped (try_wait said it runs), so this pid is still ours.
        let pid = self.child.id().context("the server has no pid")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .with_context(|| format!("running kill -{signal} {pid}"))?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
        Ok(())
    }

    /// Kills it with SIGKILL (by its pid) and reaps it: no chance to flush anything.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.with_context(|| format!("killing the {}", self.label))
    }

    /// How it ended, if it has exited on its own.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                Some(format!("{} exited ({status}); see {}", self.label, self.log.display()))
            }
            Err(error) => Some(format!("{}: cannot check it: {error}", self.label)),
        }
    }

    /// SIGTERM (with SIGCONT, in case it is paused), up to [`STOP_GRACE`] to exit, then
    /// SIGKILL. `None` if it stopped cleanly.
    pub async fn stop(mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                return Some(format!("{} had already exited ({status})", self.label));
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, server = %self.label, "cannot check the server"),
        }
        if self.signal("TERM").await.is_ok() {
            let _ = self.signal("CONT").await;
            // Its stdin closes too: a server that still reads it must not wait on us.
            self.lifeline = None;
            match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
                Ok(Ok(status)) if status.success() => return None,
                Ok(Ok(status)) => {
                    return Some(format!(
                        "{} exited with {status} after SIGTERM; see {}",
                        self.label,
                        self.log.display()
                    ));
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, server = %self.label, "waiting for the server");
                }
                Err(_) => {}
            }
        }
        if let Err(error) = self.child.kill().await {
            return Some(format!("{}: could not kill it: {error}", self.label));
        }
        Some(format!("{} did not stop within {STOP_GRACE:?} of SIGTERM; killed", self.label))
    }
}

/// How a server's start ended.
enum Readiness {
    Listening(String),
    Exited(std::io::Result<std::process::ExitStatus>),
}

/// Starts a server and waits (at most [`READY_TIMEOUT`]) for its `listening on ADDR` line.
pub async fn start(spec: &ServerSpec) -> anyhow::Result<Server> {
    let ServerSpec { label, name, exe, args, env, log } = spec;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .arg("--stop-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C in the terminal reaches only us, and we stop the
        // servers in order.
        .process_group(0);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONCORD_") {
            command.env_remove(key);
        }
    }
    // The logs are files: no colour codes in them.
    command.env("NO_COLOR", "1");
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = command.spawn().with_context(|| format!("starting the {label}"))?;
    // Taken at once: tokio's `Child::wait` (raced below against the `listening on` line) closes
    // a stdin it still holds, which would stop the server.
    let lifeline = child.stdin.take();
    let stdout = child.stdout.take().context("the child's stdout was not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    let waited = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            let line = tokio::select! {
                line = lines.next_line() => line,
                status = child.wait() => return Readiness::Exited(status),
            };
            match line {
                Ok(Some(line)) => {
                    if let Some(address) = line.trim().strip_prefix("listening on ") {
                        return Readiness::Listening(address.to_string());
                    }
                }
                // Stdout closed: the process is on its way out.
                Ok(None) | Err(_) => return Readiness::Exited(child.wait().await),
            }
        }
    })
    .await;
    let address = match waited {
        Ok(Readiness::Listening(address)) => address,
        Ok(Readiness::Exited(status)) => {
            let status = status.map_or_else(|error| error.to_string(), |s| s.to_string());
            anyhow::bail!(
                "the {label} exited before it was ready ({status}); the end of {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        Err(_) => {
            let _ = child.kill().await;
            anyhow::bail!(
                "the {label} did not print \"listening on\" within {READY_TIMEOUT:?}; the end of \
                 {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
    };
    let address: SocketAddr = match address.parse() {
        Ok(address) => address,
        Err(error) => {
            let _ = child.kill().await;
            anyhow::bail!("the {label} announced an unusable address {address:?}: {error}");
        }
    };
    // Keep reading stdout so the server never blocks on (or fails) a write to it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        label: label.clone(),
        name: name.clone(),
        address,
        child,
        lifeline,
        log: log.clone(),
    })
}

/// The last lines of a log file, indented, for error messages.
pub fn log_tail(path: &Path) -> String {
    const TAIL_BYTES: usize = 4096;
    const TAIL_LINES: usize = 12;
    let Ok(bytes) = std::fs::read(path) else {
        return "    (no log)".to_string();
    };
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    if tail.is_empty() {
        return "    (empty)".to_string();
    }
    tail.iter().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sh(dir: &Path, script: &str) -> ServerSpec {
        ServerSpec {
            label: "test server".into(),
            name: "t".into(),
            exe: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
            log: dir.join("t.log"),
        }
    }

    /// A server that exits before announcing its address is reported with its exit status and
    /// the end of its log.
    #[tokio::test]
    async fn a_server_that_dies_early_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let spec = sh(dir.path(), "echo 'cannot open the store' >&2; exit 3");
        let error = start(&spec).await.expect_err("the server exits");
        let text = format!("{error:#}");
        assert!(text.contains("exited before it was ready"), "{text}");
        assert!(text.contains("cannot open the store"), "{text}");
    }

    /// A server's address is read from its `listening on` line, and stopping it sends SIGTERM
    /// to its own pid.
    #[tokio::test]
    async fn a_ready_server_is_found_and_stopped_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            sh(dir.path(), "echo starting; echo 'listening on 127.0.0.1:4567'; exec sleep 30");
        let server = start(&spec).await.unwrap();
        assert_eq!(server.address(), "127.0.0.1:4567".parse().unwrap());
        let started = std::time::Instant::now();
        let note = server.stop().await.expect("sleep dies of SIGTERM, which is not a clean exit");
        assert!(note.contains("after SIGTERM"), "{note}");
        assert!(started.elapsed() < STOP_GRACE, "stopped by SIGTERM, not by the kill fallback");
    }

    /// A paused server can be resumed, and a killed one is reported as exited.
    #[tokio::test]
    async fn servers_pause_resume_and_die_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let spec = sh(dir.path(), "echo 'listening on 127.0.0.1:4568'; exec sleep 30");
        let mut server = start(&spec).await.unwrap();
        server.signal("STOP").await.unwrap();
        server.signal("CONT").await.unwrap();
        assert_eq!(server.exited(), None);
        server.kill().await.unwrap();
    }
}
