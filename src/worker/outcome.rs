//! What happens to a delivery once it has been handled: the one place that decides between
//! ack, delay and dead letter. Pure, so every case is unit tested; the consumer loop only
//! carries the decision out (and is where metrics will hook in).

use crate::domain::classify::ErrorClass;
use crate::domain::event::EventError;
use crate::engine::PruneError;
use crate::metrics::Finished;

/// Every [`Failure::kind`] that is not a [`PruneError::kind`].
pub const MESSAGE_KINDS: [&str; 8] = [
    "invalid_message",
    "unreadable",
    "too_large",
    "unknown_routing_key",
    "panic",
    "pass_timeout",
    "held_too_long",
    "follow_up",
];

/// Why handling a delivery failed, in the terms the dead-letter headers use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Permanent: dead-lettered at once; transient: retried (header `model-pruner-error-class`).
    pub class: ErrorClass,
    /// Low-cardinality kind (`mlflow`, `invalid_message`...).
    pub kind: &'static str,
    /// What went wrong, for people (header `model-pruner-error-message`).
    pub message: String,
}

impl Failure {
    /// A message that breaks the contract (bad JSON, missing field, unknown routing key).
    pub fn invalid_message(error: &EventError) -> Self {
        let kind = match error {
            EventError::UnknownRoutingKey(_) => "unknown_routing_key",
            EventError::Json { .. } | EventError::Empty { .. } => "invalid_message",
        };
        Failure {
            class: ErrorClass::Permanent,
            kind,
            message: error.to_string(),
        }
    }

    /// A body larger than `broker.max_message_bytes`: dead-lettered unread.
    pub fn too_large(size: usize, max: usize) -> Self {
        Failure {
            class: ErrorClass::Permanent,
            kind: "too_large",
            message: format!(
                "the message body is {size} bytes, over broker.max_message_bytes ({max}): not read"
            ),
        }
    }

    /// A pass that failed.
    pub fn pass(error: &PruneError) -> Self {
        Failure {
            class: error.class(),
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    /// A pass that panicked: a bug, or a state it did not expect. Transient, so the message
    /// comes back after the delays and is dead-lettered with this message once out of attempts,
    /// instead of looping.
    pub fn panic(experiment_id: &str, message: &str) -> Self {
        Failure {
            class: ErrorClass::Transient,
            kind: "panic",
            message: format!("the pass over experiment {experiment_id} panicked: {message}"),
        }
    }

    /// A pass still running when its oldest delivery reached `broker.ack_deadline`: cancelled
    /// before RabbitMQ's consumer_timeout could take its deliveries back. Transient: the next
    /// pass resumes where it stopped (deleted files stay deleted), and a pass that never fits
    /// is dead-lettered once out of attempts instead of looping.
    pub fn pass_timeout(experiment_id: &str, limit: std::time::Duration) -> Self {
        Failure {
            class: ErrorClass::Transient,
            kind: "pass_timeout",
            message: format!(
                "the pass over experiment {experiment_id} was still running at \
                 broker.ack_deadline ({limit:?}) and was cancelled; if passes of this experiment \
                 take longer, raise broker.ack_deadline and RabbitMQ's consumer_timeout"
            ),
        }
    }

    /// An event handed back unstarted `times` times in a row at the ack deadline: the worker
    /// is overloaded. Transient, so it costs an attempt instead of circulating for ever.
    pub fn held_too_long(experiment_id: &str, times: u32) -> Self {
        Failure {
            class: ErrorClass::Transient,
            kind: "held_too_long",
            message: format!(
                "the event for experiment {experiment_id} reached broker.ack_deadline without \
                 starting {times} times in a row: the workers are overloaded (add replicas or \
                 raise concurrency.max_in_flight)"
            ),
        }
    }

    /// A pass left runs in their grace window and its follow-up could not be scheduled.
    /// Transient: the events come back and their pass (which finds its deletions done)
    /// schedules it again, so no run stays in grace for ever unseen.
    pub fn follow_up(experiment_id: &str, error: &str) -> Self {
        Failure {
            class: ErrorClass::Transient,
            kind: "follow_up",
            message: format!(
                "could not schedule the follow-up pass of experiment {experiment_id} at the end \
                 of its grace window: {error}"
            ),
        }
    }

    /// A run.finished event naming a run of another experiment.
    pub fn foreign_run(experiment_id: &str, run_id: &str) -> Self {
        Failure {
            class: ErrorClass::Permanent,
            kind: "run_not_in_experiment",
            message: format!("run {run_id} does not belong to experiment {experiment_id}"),
        }
    }
}

/// The limits transient failures are retried under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRules {
    /// Deliveries of one message, first included, before it is dead-lettered.
    pub max_attempts: u32,
    /// Number of delay queues (`retry.delays`).
    pub delay_steps: usize,
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge.
    Ack,
    /// Transient failure: re-publish to delay queue `step` with `attempts` recorded, then ack.
    Delay {
        /// Why handling failed; written to the copy's `model-pruner-error-*` headers.
        failure: Failure,
        /// Deliveries of the message so far, this one included (header `model-pruner-attempts`).
        attempts: u32,
        /// Index into `retry.delays`: attempt n goes to step n-1, the last step for the rest.
        step: usize,
    },
    /// Permanent failure or out of attempts: re-publish to the dead-letter queue, then ack.
    DeadLetter {
        /// Why handling failed; written to the letter's `model-pruner-error-*` headers.
        failure: Failure,
        /// Deliveries of the message, this one included (header `model-pruner-attempts`).
        attempts: u32,
    },
}

impl Outcome {
    /// Low-cardinality name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Delay { .. } => "delay",
            Outcome::DeadLetter { .. } => "dead_letter",
        }
    }
}

impl<'a> From<&'a Outcome> for Finished<'a> {
    fn from(outcome: &'a Outcome) -> Self {
        match outcome {
            Outcome::Ack => Finished::Ok,
            Outcome::Delay { .. } => Finished::Delayed,
            Outcome::DeadLetter { failure, .. } => Finished::DeadLettered {
                class: failure.class.as_str(),
                reason: failure.kind,
            },
        }
    }
}

/// Decides the outcome of `attempt` (1 for the first delivery) of a message.
pub fn decide(result: Result<(), Failure>, attempt: u32, rules: RetryRules) -> Outcome {
    let attempt = attempt.max(1);
    match result {
        Ok(()) => Outcome::Ack,
        Err(failure) if failure.class == ErrorClass::Transient && attempt < rules.max_attempts => {
            let last = rules.delay_steps.saturating_sub(1);
            Outcome::Delay {
                failure,
                attempts: attempt,
                step: (attempt as usize - 1).min(last),
            }
        }
        Err(failure) => Outcome::DeadLetter {
            failure,
            attempts: attempt,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: RetryRules = RetryRules {
        max_attempts: 5,
        delay_steps: 3,
    };

    fn failure(class: ErrorClass) -> Failure {
        Failure {
            class,
            kind: "mlflow",
            message: "boom".into(),
        }
    }

    #[test]
    fn success_is_acked_whatever_the_attempt() {
        for attempt in [0, 1, 5, 99] {
            assert_eq!(decide(Ok(()), attempt, RULES), Outcome::Ack);
        }
    }

    #[test]
    fn permanent_failure_is_dead_lettered_at_once() {
        for attempt in [1, 2, 5, 9] {
            assert_eq!(
                decide(Err(failure(ErrorClass::Permanent)), attempt, RULES),
                Outcome::DeadLetter {
                    failure: failure(ErrorClass::Permanent),
                    attempts: attempt
                }
            );
        }
    }

    #[test]
    fn transient_failure_is_delayed_on_the_nth_step_until_the_last_attempt() {
        let steps: Vec<_> = (1..5)
            .map(|a| decide(Err(failure(ErrorClass::Transient)), a, RULES))
            .collect();
        let expected: Vec<_> = [(1, 0), (2, 1), (3, 2), (4, 2)]
            .into_iter()
            .map(|(attempts, step)| Outcome::Delay {
                failure: failure(ErrorClass::Transient),
                attempts,
                step,
            })
            .collect();
        assert_eq!(steps, expected);
    }

    #[test]
    fn transient_failure_on_the_last_attempt_is_dead_lettered() {
        for attempt in [5, 6, 100] {
            assert_eq!(
                decide(Err(failure(ErrorClass::Transient)), attempt, RULES),
                Outcome::DeadLetter {
                    failure: failure(ErrorClass::Transient),
                    attempts: attempt
                }
            );
        }
    }

    #[test]
    fn one_attempt_means_no_delay() {
        let rules = RetryRules {
            max_attempts: 1,
            delay_steps: 1,
        };
        assert!(matches!(
            decide(Err(failure(ErrorClass::Transient)), 1, rules),
            Outcome::DeadLetter { attempts: 1, .. }
        ));
    }

    #[test]
    fn missing_attempt_counts_as_the_first() {
        assert!(matches!(
            decide(Err(failure(ErrorClass::Transient)), 0, RULES),
            Outcome::Delay {
                attempts: 1,
                step: 0,
                ..
            }
        ));
    }

    #[test]
    fn invalid_messages_are_permanent() {
        let err = crate::domain::event::Event::parse("nope", b"{}").unwrap_err();
        let f = Failure::invalid_message(&err);
        assert_eq!(
            (f.class, f.kind),
            (ErrorClass::Permanent, "unknown_routing_key")
        );
        let err = crate::domain::event::Event::parse("run.finished", b"{").unwrap_err();
        assert_eq!(Failure::invalid_message(&err).kind, "invalid_message");
    }
}
