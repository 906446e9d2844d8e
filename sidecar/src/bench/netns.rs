//! Stragglers from real interference, as in ParM's experiments: each worker
//! runs in a network namespace of its own behind a veth pair whose both
//! ends are rate-limited with `tbf`, and seeded background transfers
//! between random pairs of instances (scaled down from the paper's
//! 128–256 MB shuffles) queue up in front of inference traffic.
//!
//! A transfer from instance i to instance j is sent as two concurrent
//! flows, i → host and host → j, so it crosses i's outbound link and j's
//! inbound one without turning the host into a router. Needs root (`ip`,
//! `tc`); everything is removed on drop, and all traffic stays on this
//! machine and stops with the run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Port of the discard sinks, in every namespace and on the host side.
const SINK_PORT: u16 = 9;

#[derive(Debug, Clone, Copy)]
pub struct NetPlan {
    /// `tbf` rate of each direction of each worker's link, in Mbit/s.
    pub rate_mbit: u32,
    /// Background transfers started per second (Poisson), over all pairs.
    pub transfers_per_second: f64,
    /// Size range of a transfer, in bytes.
    pub min_bytes: u64,
    pub max_bytes: u64,
    pub seed: u64,
}

/// One namespace per worker: `10.<net>.<i>.2` inside, `10.<net>.<i>.1` on
/// the host end of its veth.
pub struct Namespaces {
    names: Vec<String>,
    host_ifs: Vec<String>,
    net: u8,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Namespaces {
    /// Creates `n` namespaces with rate-limited links.
    pub fn create(n: usize, rate_mbit: u32) -> anyhow::Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("--mode network needs root (network namespaces, veth and tc)");
        }
        let pid = std::process::id();
        // A /16 of 10/8 per run, so concurrent runs do not collide.
        let net = 100 + (pid % 100) as u8;
        let mut ns = Namespaces {
            names: Vec::new(),
            host_ifs: Vec::new(),
            net,
        };
        for i in 0..n {
            // Interface names are at most 15 bytes.
            let (name, host_if, inner_if) = (
                format!("coded-{pid}-{i}"),
                format!("cb{}h{i}", pid % 100_000),
                format!("cb{}n{i}", pid % 100_000),
            );
            run(&["ip", "netns", "add", &name])?;
            ns.names.push(name.clone());
            run(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
            ])?;
            ns.host_ifs.push(host_if.clone());
            run(&["ip", "link", "set", &inner_if, "netns", &name])?;
            let (host_ip, inner_ip) = (ns.host_addr(i), ns.addr(i));
            run(&[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &host_if,
            ])?;
            run(&["ip", "link", "set", &host_if, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", &name];
                all.extend_from_slice(args);
                run(&all)
            };
            inside(&[
                "ip",
                "addr",
                "add",
                &format!("{inner_ip}/24"),
                "dev",
                &inner_if,
            ])?;
            inside(&["ip", "link", "set", &inner_if, "up"])?;
            inside(&["ip", "link", "set", "lo", "up"])?;
            // Both directions limited: requests queue on the host end,
            // answers on the inner one.
            let rate = format!("{rate_mbit}mbit");
            let tbf = ["tbf", "rate", &rate, "burst", "32kbit", "latency", "100ms"];
            let mut host_tc = vec!["tc", "qdisc", "add", "dev", &host_if, "root"];
            host_tc.extend_from_slice(&tbf);
            run(&host_tc)?;
            let mut inner_tc = vec!["tc", "qdisc", "add", "dev", &inner_if, "root"];
            inner_tc.extend_from_slice(&tbf);
            inside(&inner_tc)?;
        }
        Ok(ns)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The worker's address inside namespace `i`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, i as u8, 2)
    }

    /// The host end of namespace `i`'s link.
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, i as u8, 1)
    }

    /// Runs `f` on a thread inside namespace `i` (sockets it opens live there).
    fn spawn_in<F: FnOnce() + Send + 'static>(&self, i: usize, f: F) -> anyhow::Result<()> {
        let path = format!("/var/run/netns/{}", self.names[i]);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::spawn(move || {
            // setns moves only this thread.
            if setns(file.as_fd(), CloneFlags::CLONE_NEWNET).is_ok() {
                f();
            }
        });
        Ok(())
    }

    /// Background transfers for `duration` from `start`, seeded; returns
    /// the bytes sent.
    pub async fn interfere(
        &self,
        plan: NetPlan,
        duration: Duration,
        start: tokio::time::Instant,
    ) -> anyhow::Result<u64> {
        let n = self.len();
        if n < 2 {
            return Ok(0);
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Discard sinks: one on each host end, one in each namespace.
        for i in 0..n {
            let host = TcpListener::bind(SocketAddr::from((self.host_addr(i), SINK_PORT)))
                .context("binding a host-side sink")?;
            spawn_sink(host, stop.clone());
            let inner = self.addr(i);
            let stop = stop.clone();
            self.spawn_in(i, move || {
                if let Ok(l) = TcpListener::bind(SocketAddr::from((inner, SINK_PORT))) {
                    spawn_sink(l, stop);
                }
            })?;
        }
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0x4e37);
        let mut at = 0.0f64;
        loop {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            at += -u.ln() / plan.transfers_per_second.max(1e-9);
            if at >= duration.as_secs_f64() {
                break;
            }
            let from = rng.random_range(0..n);
            let to = (from + rng.random_range(1..n)) % n;
            let bytes = rng.random_range(plan.min_bytes..=plan.max_bytes.max(plan.min_bytes));
            tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
            // i → host, from inside namespace i.
            let (dest, count) = (
                SocketAddr::from((self.host_addr(from), SINK_PORT)),
                sent.clone(),
            );
            self.spawn_in(from, move || blast(dest, bytes, &count))?;
            // host → j.
            let (dest, count) = (SocketAddr::from((self.addr(to), SINK_PORT)), sent.clone());
            std::thread::spawn(move || blast(dest, bytes, &count));
        }
        tokio::time::sleep_until(start + duration).await;
        stop.store(true, Ordering::Relaxed);
        Ok(sent.load(Ordering::Relaxed))
    }
}

/// Accepts and discards until `stop`, then closes the listener (polling,
/// so that the port is free for the next configuration).
fn spawn_sink(listener: TcpListener, stop: Arc<AtomicBool>) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
}

fn blast(dest: SocketAddr, bytes: u64, sent: &std::sync::atomic::AtomicU64) {
    let Ok(mut s) = TcpStream::connect_timeout(&dest, Duration::from_secs(2)) else {
        return;
    };
    let chunk = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 && started.elapsed() < Duration::from_secs(30) {
        let n = left.min(chunk.len() as u64) as usize;
        if s.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
        sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth, and with it the pair.
        for ifname in &self.host_ifs {
            let _ = run(&["ip", "link", "del", ifname]);
        }
        for name in &self.names {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}
