//! Start-up steps and background-task supervision.
//!
//! Start-up is a chain of named [`Step`]s in dependency order (keys → store → TUN →
//! socket → NAT probe → control → detectors → API), each with a timeout; a failure is one
//! sentence naming the step. Background tasks are [`Priority`]-ordered: the data path is
//! started first and stopped last; probes and detectors the other way round. A supervised
//! task that fails or panics is restarted with exponential back-off; the data path itself is
//! not restartable (its state is the party's sessions), so its end ends the daemon.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The start-up steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Keys,
    Store,
    Tun,
    Socket,
    NatProbe,
    Control,
    Detectors,
    Api,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Keys => "keys",
            Step::Store => "store",
            Step::Tun => "tun",
            Step::Socket => "socket",
            Step::NatProbe => "nat-probe",
            Step::Control => "control",
            Step::Detectors => "detectors",
            Step::Api => "api",
        }
    }

    /// How long the step may take before start-up gives up on it.
    pub fn timeout(self) -> Duration {
        match self {
            // Opening (and migrating) the database may wait on a busy file.
            Step::Store => Duration::from_secs(10),
            // A first NAT answer takes one round trip; the rest continues in the background.
            Step::NatProbe => Duration::from_secs(3),
            // Starting an embedded control plane opens its database too.
            Step::Control => Duration::from_secs(10),
            _ => Duration::from_secs(5),
        }
    }
}

/// Runs one start-up step under its timeout; the error names the step.
pub async fn step<T>(
    step: Step,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(step.timeout(), fut).await {
        Ok(Ok(v)) => {
            tracing::debug!(
                step = step.name(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "start-up step done"
            );
            Ok(v)
        }
        Ok(Err(e)) => Err(e.context(format!("start-up step `{}` failed", step.name()))),
        Err(_) => Err(anyhow::anyhow!(
            "start-up step `{}` did not finish within {} s",
            step.name(),
            step.timeout().as_secs()
        )),
    }
}

/// Supervised background tasks by importance: stopped least important first. Above them
/// all, and not restartable, are the data path (started first, stopped last: its state is
/// the party's sessions) and the party session with the embedded control plane, which the
/// start-up and shutdown sequences in `supervisor` order explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// The local API's event stream.
    Api,
    /// Game detection and other probes: useful, never urgent.
    Detectors,
}

impl Priority {
    /// First wait before restarting a failed task of this priority; doubles per failure up
    /// to [`MAX_BACKOFF`]. The more important, the sooner it comes back.
    fn backoff(self) -> Duration {
        match self {
            Priority::Api => Duration::from_millis(500),
            Priority::Detectors => Duration::from_secs(2),
        }
    }
}

pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A task that ran this long before failing starts its back-off afresh.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// A supervised task: restarted when it fails, stopped on request.
pub struct Supervised {
    pub name: &'static str,
    pub priority: Priority,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Supervised {
    /// Dropped without [`stop_all`]: the task ends now.
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Runs `make(stop)` as task `name`; whenever the future it returns ends with an error or
/// panics (and `stop` was not raised), waits the back-off and starts it again. A future
/// that ends with `Ok` is done. `make` gets a receiver that turns `true` at shutdown.
pub fn supervise<F, Fut>(name: &'static str, priority: Priority, make: F) -> Supervised
where
    F: Fn(watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut backoff = priority.backoff();
        let mut restarts: u32 = 0;
        loop {
            let started = tokio::time::Instant::now();
            let outcome = tokio::spawn(make(stop_rx.clone())).await;
            if *stop_rx.borrow() {
                return;
            }
            let why = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) if e.is_panic() => "it panicked".to_owned(),
                Err(_) => return, // cancelled
            };
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = priority.backoff();
            }
            restarts += 1;
            tracing::error!(task = name, error = %why, restarts, retry_in_ms = backoff.as_millis() as u64, "background task failed; restarting");
            let mut stop_rx = stop_rx.clone();
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop_rx.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    Supervised {
        name,
        priority,
        stop,
        task: Some(task),
    }
}

/// Stops tasks lowest priority first (the reverse of start-up), each given `grace` to end
/// before it is aborted.
pub async fn stop_all(mut tasks: Vec<Supervised>, grace: Duration) {
    tasks.sort_by_key(|t| std::cmp::Reverse(t.priority));
    for mut t in tasks {
        let _ = t.stop.send(true);
        if let Some(mut task) = t.task.take()
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            task.abort();
        }
        tracing::debug!(task = t.name, "stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_with_growing_backoff_until_it_succeeds() {
        let runs = Arc::new(AtomicU32::new(0));
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t0 = tokio::time::Instant::now();
        let (r, s) = (Arc::clone(&runs), Arc::clone(&starts));
        let sup = supervise("flaky", Priority::Detectors, move |_stop| {
            let (r, s) = (Arc::clone(&r), Arc::clone(&s));
            async move {
                s.lock().expect("lock").push(t0.elapsed());
                match r.fetch_add(1, Ordering::SeqCst) {
                    0 => anyhow::bail!("first failure"),
                    1 => panic!("second failure"),
                    _ => Ok(()),
                }
            }
        });
        let mut sup = sup;
        sup.task
            .take()
            .expect("task")
            .await
            .expect("supervisor ends once the task succeeds");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let starts = starts.lock().expect("lock").clone();
        // Back-off 2 s, then 4 s.
        assert_eq!(starts[1] - starts[0], Duration::from_secs(2));
        assert_eq!(starts[2] - starts[1], Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_tasks_in_reverse_priority_order() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, p) in [
            ("events", Priority::Api),
            ("games", Priority::Detectors),
            ("events2", Priority::Api),
        ] {
            let order = Arc::clone(&order);
            tasks.push(supervise(name, p, move |mut stop| {
                let order = Arc::clone(&order);
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                    order.lock().expect("lock").push(name);
                    Ok(())
                }
            }));
        }
        tokio::task::yield_now().await;
        stop_all(tasks, Duration::from_secs(1)).await;
        assert_eq!(
            *order.lock().expect("lock"),
            vec!["games", "events", "events2"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_that_fails_or_hangs_is_named() {
        let e = step::<()>(Step::Socket, async { anyhow::bail!("address in use") })
            .await
            .expect_err("fails");
        assert_eq!(
            format!("{e:#}"),
            "start-up step `socket` failed: address in use"
        );
        let e = step(Step::Tun, std::future::pending::<anyhow::Result<()>>())
            .await
            .expect_err("times out");
        assert_eq!(
            e.to_string(),
            "start-up step `tun` did not finish within 5 s"
        );
    }
}
