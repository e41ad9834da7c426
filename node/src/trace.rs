//! An optional trace of what a shard hands to its WAL and its transport, in order, and
//! the check of the durability rule over it: no vote and no append response leaves
//! before the state it vouches for is durable (Raft dissertation §3.8). Off unless a
//! test asks for it; when off it costs one branch per event.

use std::sync::{Arc, Mutex};

use skiff_engine::{HardState, Index, Message, MessageBody, NodeId, Term};

/// One thing the shard did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    /// A Ready's write handed to the WAL: its last entry, hard state, and snapshot.
    WalSubmitted { tag: u64, last: Option<(Index, Term)>, hard_state: Option<HardState>, snapshot: Option<Index> },
    /// The WAL reported that write done (`synced`: an fdatasync covered it).
    WalCompleted { tag: u64, synced: bool },
    /// A message handed to the transport.
    Sent(Message),
}

/// Where a shard records its trace.
pub type Trace = Arc<Mutex<Vec<TraceEvent>>>;

/// What [`check_durability`] verified (so a test can tell it was not vacuous).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub append_responses: u64,
    pub votes_granted: u64,
}

/// Checks one node's trace: every accepting append response and every granted vote it
/// sent is covered by writes the WAL had already reported durable.
pub fn check_durability(node: NodeId, events: &[TraceEvent]) -> Result<Checked, String> {
    // Submissions not yet completed, oldest first.
    let mut submitted: std::collections::VecDeque<&TraceEvent> = std::collections::VecDeque::new();
    // The durable state: the end of the durable log and the durable hard state.
    let mut log_end: Index = 0;
    let mut hard: HardState = HardState::default();
    let mut checked = Checked::default();
    for (i, e) in events.iter().enumerate() {
        match e {
            TraceEvent::WalSubmitted { .. } => submitted.push_back(e),
            TraceEvent::WalCompleted { tag, synced } => {
                // Completions come in order and cover every earlier submission.
                while let Some(TraceEvent::WalSubmitted { tag: t, last, hard_state, snapshot }) =
                    submitted.front().copied()
                {
                    if t > tag {
                        break;
                    }
                    submitted.pop_front();
                    if let Some(s) = snapshot {
                        log_end = *s;
                    }
                    if let Some((index, _)) = last {
                        // A write replaces the log from its first entry: its last entry
                        // is the new end.
                        log_end = *index;
                    }
                    if let Some(h) = hard_state
                        && (*synced || (h.term == hard.term && h.vote == hard.vote))
                    {
                        hard = *h;
                    }
                }
            }
            TraceEvent::Sent(m) => match &m.body {
                MessageBody::AppendResponse { index, reject: false, .. } if *index > 0 => {
                    if *index > log_end {
                        return Err(format!(
                            "node {node}, event {i}: append response for index {index} at term {} sent when only \
                             {log_end} was durable",
                            m.term
                        ));
                    }
                    checked.append_responses += 1;
                }
                MessageBody::VoteResponse { pre: false, reject: false, .. } => {
                    if hard.term != m.term || hard.vote != m.to {
                        return Err(format!(
                            "node {node}, event {i}: vote for {} at term {} sent when the durable hard state was {hard:?}",
                            m.to, m.term
                        ));
                    }
                    checked.votes_granted += 1;
                }
                _ => {}
            },
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(index: Index) -> TraceEvent {
        TraceEvent::Sent(Message {
            from: 2,
            to: 1,
            term: 3,
            body: MessageBody::AppendResponse { index, reject: false, hint_index: 0, hint_term: 0 },
        })
    }

    fn vote(to: NodeId, term: Term) -> TraceEvent {
        TraceEvent::Sent(Message {
            from: 2,
            to,
            term,
            body: MessageBody::VoteResponse { pre: false, reject: false, commit: 0, commit_term: 0 },
        })
    }

    fn submit(tag: u64, last: Option<(Index, Term)>, hs: Option<HardState>) -> TraceEvent {
        TraceEvent::WalSubmitted { tag, last, hard_state: hs, snapshot: None }
    }

    #[test]
    fn responses_after_durability_pass() {
        let t = vec![
            submit(1, Some((5, 3)), Some(HardState { term: 3, vote: 1, commit: 0 })),
            TraceEvent::WalCompleted { tag: 1, synced: true },
            resp(5),
            vote(1, 3),
        ];
        assert_eq!(check_durability(2, &t), Ok(Checked { append_responses: 1, votes_granted: 1 }));
    }

    #[test]
    fn a_response_before_its_write_is_durable_fails() {
        let t = vec![submit(1, Some((5, 3)), None), resp(5), TraceEvent::WalCompleted { tag: 1, synced: true }];
        assert!(check_durability(2, &t).unwrap_err().contains("index 5"));
        // Durable up to 4 only: a response for 5 fails too.
        let t = vec![
            submit(1, Some((4, 3)), None),
            submit(2, Some((5, 3)), None),
            TraceEvent::WalCompleted { tag: 1, synced: true },
            resp(5),
        ];
        assert!(check_durability(2, &t).is_err());
    }

    #[test]
    fn a_vote_before_its_hard_state_is_durable_fails() {
        let hs = HardState { term: 4, vote: 1, commit: 0 };
        let t = vec![submit(1, None, Some(hs)), vote(1, 4), TraceEvent::WalCompleted { tag: 1, synced: true }];
        assert!(check_durability(2, &t).unwrap_err().contains("vote for 1 at term 4"));
        let t = vec![submit(1, None, Some(hs)), TraceEvent::WalCompleted { tag: 1, synced: true }, vote(3, 4)];
        assert!(check_durability(2, &t).is_err(), "a vote for another candidate than the durable one");
    }

    #[test]
    fn a_truncating_write_moves_the_end_back() {
        let t = vec![
            submit(1, Some((9, 2)), None),
            TraceEvent::WalCompleted { tag: 1, synced: true },
            submit(2, Some((6, 3)), None),
            TraceEvent::WalCompleted { tag: 2, synced: true },
            resp(8),
        ];
        assert!(check_durability(2, &t).is_err(), "8 was replaced by a shorter log ending at 6");
    }
}
