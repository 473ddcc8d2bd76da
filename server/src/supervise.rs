//! Background tasks that must not be lost silently: a panic is logged with
//! its cause and the task started again.

use std::{future::Future, time::Duration};

/// Pause before a panicked task starts again, so that a task that panics at
/// once does not spin.
const RESTART_DELAY: Duration = Duration::from_millis(200);

/// Runs the future `make` returns in its own task; if it panics, logs why and
/// runs a new one. Ends when a run returns normally.
pub fn spawn<F, Fut>(name: impl Into<String>, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = name.into();
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let cause = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_string());
                    tracing::error!(task = %name, %cause, "background task panicked; restarting it");
                    tokio::time::sleep(RESTART_DELAY).await;
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_restarted_until_it_finishes() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        spawn("test", move || {
            let runs = Arc::clone(&counted);
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
            }
        })
        .await
        .expect("the supervisor itself does not panic");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
