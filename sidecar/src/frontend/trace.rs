//! Why a query was slow: an opt-in, sampled trace of coding batches, one
//! JSON line per batch (`frontend --trace-file`). A line holds the batch's
//! size and deadline and, in time order from its start, every call (which
//! slot or the parity, to which instance, which attempt), every result that
//! came back (or its error), and every answer given (real, rebuilt, or
//! failed with its reason). Late answers after the batch ended are not in
//! it (they are counted in `coded_frontend_late_answers_total`).
//!
//! ```json
//! {"batch":7,"unix_ms":1764756000123,"k":2,"queries":2,"deadline_us":10000000,"done_us":5120,
//!  "events":[{"t_us":12,"call":"slot 0","instance":"http://10.0.0.5:8080","attempt":0},
//!            {"t_us":2100,"result":"parity","ok":true},
//!            {"t_us":5120,"answer":1,"kind":"rebuilt"}]}
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::batch_state::Target;

/// Where sampled batches go; shared by every batch of a frontend.
pub struct Tracer {
    out: Mutex<BufWriter<File>>,
    /// Every `every`-th batch is traced.
    every: u64,
    batches: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--trace-sample must be in (0, 1], not {0}")]
    Sample(f64),
    #[error("cannot open the trace file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

impl Tracer {
    /// Appends to `path`; traces a `sample` share of batches (1 in
    /// round(1/sample), so the same load gives the same batches).
    pub fn create(path: &Path, sample: f64) -> Result<Tracer, TraceError> {
        if !(sample > 0.0 && sample <= 1.0) {
            return Err(TraceError::Sample(sample));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TraceError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Tracer {
            out: Mutex::new(BufWriter::new(file)),
            every: (1.0 / sample).round().max(1.0) as u64,
            batches: AtomicU64::new(0),
        })
    }

    /// A trace for the next batch, if it is sampled.
    pub fn begin(&self, k: usize, queries: usize, deadline_us: u64) -> Option<BatchTrace> {
        let n = self.batches.fetch_add(1, Ordering::Relaxed);
        (n % self.every == 0).then(|| BatchTrace {
            started: Instant::now(),
            line: Line {
                batch: n,
                unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                k,
                queries,
                deadline_us,
                done_us: 0,
                events: Vec::new(),
            },
        })
    }

    /// Writes a finished batch's line; a trace that cannot be written is
    /// dropped with a warning, never the batch.
    pub fn finish(&self, mut trace: BatchTrace) {
        trace.line.done_us = trace.elapsed_us();
        let written = serde_json::to_vec(&trace.line)
            .map_err(std::io::Error::from)
            .and_then(|mut line| {
                line.push(b'\n');
                let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                out.write_all(&line)?;
                out.flush()
            });
        if let Err(e) = written {
            tracing::warn!("cannot write the trace: {e}");
        }
    }
}

/// One batch's events, kept while it runs.
pub struct BatchTrace {
    started: Instant,
    line: Line,
}

#[derive(Debug, Serialize)]
struct Line {
    batch: u64,
    unix_ms: u64,
    k: usize,
    queries: usize,
    deadline_us: u64,
    done_us: u64,
    events: Vec<Event>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Event {
    Call {
        t_us: u64,
        call: String,
        instance: String,
        attempt: usize,
    },
    Result {
        t_us: u64,
        result: String,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Answer {
        t_us: u64,
        answer: usize,
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

fn target(t: Target) -> String {
    match t {
        Target::Slot(j) => format!("slot {j}"),
        // Parity 0 keeps the name it had with one parity.
        Target::Parity(0) => "parity".into(),
        Target::Parity(l) => format!("parity {l}"),
    }
}

impl BatchTrace {
    fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn call(&mut self, to: Target, instance: &str, attempt: usize) {
        let t_us = self.elapsed_us();
        self.line.events.push(Event::Call {
            t_us,
            call: target(to),
            instance: instance.to_owned(),
            attempt,
        });
    }

    pub fn result(&mut self, of: Target, error: Option<String>) {
        let t_us = self.elapsed_us();
        self.line.events.push(Event::Result {
            t_us,
            result: target(of),
            ok: error.is_none(),
            error,
        });
    }

    /// `kind`: `real`, `rebuilt` or `failed` (with `detail`).
    pub fn answer(&mut self, query: usize, kind: &'static str, detail: Option<String>) {
        let t_us = self.elapsed_us();
        self.line.events.push(Event::Answer {
            t_us,
            answer: query,
            kind,
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_one_batch_in_n_and_writes_a_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let tracer = Tracer::create(&path, 0.25).unwrap();
        let mut traced = 0;
        for _ in 0..8 {
            if let Some(mut t) = tracer.begin(2, 2, 1_000) {
                t.call(Target::Slot(0), "http://a", 0);
                t.call(Target::Parity(0), "http://p", 0);
                t.result(Target::Slot(0), Some("timed out".into()));
                t.result(Target::Parity(0), None);
                t.answer(0, "rebuilt", None);
                t.answer(1, "failed", Some("no instance".into()));
                tracer.finish(t);
                traced += 1;
            }
        }
        assert_eq!(traced, 2, "batches 0 and 4 of 8");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["batch"], 0);
        assert_eq!(lines[1]["batch"], 4);
        let l = &lines[0];
        assert_eq!((l["k"].as_u64(), l["queries"].as_u64()), (Some(2), Some(2)));
        let e = l["events"].as_array().unwrap();
        assert_eq!(e[0]["call"], "slot 0");
        assert_eq!(e[0]["instance"], "http://a");
        assert_eq!(e[1]["call"], "parity");
        assert_eq!(
            (e[2]["result"].as_str(), e[2]["ok"].as_bool()),
            (Some("slot 0"), Some(false))
        );
        assert_eq!(e[2]["error"], "timed out");
        assert!(e[3].get("error").is_none());
        assert_eq!(
            (e[4]["answer"].as_u64(), e[4]["kind"].as_str()),
            (Some(0), Some("rebuilt"))
        );
        assert_eq!(e[5]["detail"], "no instance");
        let times: Vec<u64> = e.iter().map(|e| e["t_us"].as_u64().unwrap()).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "in time order: {times:?}"
        );
        assert!(l["done_us"].as_u64().unwrap() >= *times.last().unwrap());
    }

    #[test]
    fn bad_sample_and_unwritable_path_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tracer::create(&dir.path().join("t"), 0.0).err().unwrap();
        assert_eq!(err.to_string(), "--trace-sample must be in (0, 1], not 0");
        let err = Tracer::create(&dir.path().join("no/such/dir/t"), 0.5)
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("cannot open the trace file"),
            "{err}"
        );
    }
}
