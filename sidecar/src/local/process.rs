//! Child processes of this binary (workers, frontends) on loopback: start
//! one, learn its URL from the line it prints, signal it, stop it.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Has the child killed (SIGTERM) when this process dies, even by a signal
/// that skips destructors (Ctrl-C on `bench`, a killed test): otherwise
/// its workers would outlive it, holding ports and CPU.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one async-signal-safe system call.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
}

/// A running child and the URL it serves on.
pub struct Child {
    pub name: String,
    pub url: String,
    /// `host:port` of its gRPC service, when it printed one.
    pub grpc: Option<String>,
    child: tokio::process::Child,
}

/// What precedes the gRPC address in a worker's or frontend's output.
const GRPC_MARK: &str = "over gRPC on ";
/// How long a child may take to print its URL.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Child {
    /// Starts `coded-sidecar <args>` and waits for the `http://` line it
    /// prints once it listens (and notes the `over gRPC on` line before it). Its logs go to our stderr; `log_level` sets
    /// its `RUST_LOG` unless the caller's environment has one.
    pub async fn spawn(name: &str, args: &[String], log_level: &str) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("finding the coded-sidecar binary")?;
        Self::spawn_exe(&exe, name, args, log_level).await
    }

    pub async fn spawn_exe(
        exe: &std::path::Path,
        name: &str,
        args: &[String],
        log_level: &str,
    ) -> anyhow::Result<Child> {
        let mut command = Command::new(exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        die_with_parent(&mut command);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", log_level);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}: {} {}", exe.display(), args.join(" ")))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut grpc = None;
        let url = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(at) = line.find(GRPC_MARK) {
                    grpc = Some(line[at + GRPC_MARK.len()..].trim().to_owned());
                }
                if let Some(at) = line.find("http://").or_else(|| line.find("https://")) {
                    return Ok(Some(line[at..].trim().to_owned()));
                }
            }
            anyhow::Ok(None)
        })
        .await
        .with_context(|| format!("{name} did not start listening within {START_TIMEOUT:?}"))??;
        let Some(url) = url else {
            let status = child.wait().await?;
            bail!("{name} exited before listening ({status}); its error is above");
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Child {
            name: name.to_owned(),
            url,
            grpc,
            child,
        })
    }

    /// A child started some other way (e.g. a Prometheus), stopped the same way.
    pub fn adopt(name: &str, url: String, child: tokio::process::Child) -> Child {
        Child {
            name: name.to_owned(),
            url,
            grpc: None,
            child,
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.id().map(|id| Pid::from_raw(id as i32))
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGKILL for fault injection).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} has already exited", self.name))?;
        kill(pid, signal).with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// Whether the child has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM (the child drains), then SIGKILL if it takes too long.
    pub async fn stop(mut self) {
        if self.exited().is_some() {
            return;
        }
        // A paused child cannot handle SIGTERM.
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.signal(Signal::SIGTERM);
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(child = %self.name, "did not stop after SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// Stops every child at once.
pub async fn stop_all(children: Vec<Child>) {
    let stops: Vec<_> = children
        .into_iter()
        .map(|c| tokio::spawn(c.stop()))
        .collect();
    for s in stops {
        let _ = s.await;
    }
}
