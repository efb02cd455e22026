//! Asking every other member at once: erasure and access requests (every member holds copies and logs), the
//! hand-off's "done" messages, holds through an etcd outage. Every member is asked in parallel, each within the
//! same timeout, so a slow or dead member delays nobody else's answer and the whole takes as long as the slowest
//! member (at most the timeout) — not the sum.

use std::future::Future;
use std::time::Duration;

use aisle_proto::v1::peer_service_client::PeerServiceClient;
use tokio::task::JoinSet;
use tonic::Status;
use tonic::transport::Channel;

use super::{Cluster, Member, View};
use crate::error::RemoteError;

/// Asks every member of `view` but this node, at once, through `call` given a client to that member; each member
/// with its answer (or why there is none), in view order.
pub async fn ask_others<T, F, Fut>(
    cluster: &Cluster,
    view: &View,
    timeout: Duration,
    call: F,
) -> Vec<(Member, Result<T, RemoteError>)>
where
    F: Fn(PeerServiceClient<Channel>, &Member) -> Fut,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    let others = view
        .members
        .iter()
        .filter(|m| m.node_id != cluster.node_id)
        .cloned()
        .collect();
    ask(others, timeout, |member| {
        let answer = cluster.peers.client(&member.addr).map(|c| call(c, member));
        async move {
            match answer {
                Ok(pending) => pending.await.map_err(RemoteError::from),
                Err(status) => Err(RemoteError::from(status)),
            }
        }
    })
    .await
}

/// Runs `call` for every one of `members` at once, each within `timeout`; each member with its answer, in the
/// order given.
pub async fn ask<T, F, Fut>(
    members: Vec<Member>,
    timeout: Duration,
    call: F,
) -> Vec<(Member, Result<T, RemoteError>)>
where
    F: Fn(&Member) -> Fut,
    Fut: Future<Output = Result<T, RemoteError>> + Send + 'static,
    T: Send + 'static,
{
    let mut asks = JoinSet::new();
    for (index, member) in members.iter().enumerate() {
        let pending = call(member);
        asks.spawn(async move {
            let answer = tokio::time::timeout(timeout, pending)
                .await
                .unwrap_or_else(|_| {
                    Err(RemoteError::Deadline(format!(
                        "no answer within {} ms",
                        timeout.as_millis()
                    )))
                });
            (index, answer)
        });
    }
    let mut answers: Vec<Option<Result<T, RemoteError>>> = std::iter::repeat_with(|| None)
        .take(members.len())
        .collect();
    while let Some(joined) = asks.join_next().await {
        if let Ok((index, answer)) = joined {
            answers[index] = Some(answer);
        }
    }
    members
        .into_iter()
        .zip(answers)
        .map(|(m, answer)| {
            let answer = answer
                .unwrap_or_else(|| Err(RemoteError::Unreachable("the call's task failed".into())));
            (m, answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;
    use crate::cluster::view::testing::member;

    /// Each member answers its own id after its delay (`None`: never).
    fn delays(
        of: &[(&str, Option<u64>)],
    ) -> impl Fn(&Member) -> std::pin::Pin<Box<dyn Future<Output = Result<String, RemoteError>> + Send>>
    {
        let of: Vec<(String, Option<u64>)> = of.iter().map(|(m, d)| (m.to_string(), *d)).collect();
        move |m: &Member| {
            let delay = of
                .iter()
                .find(|(id, _)| *id == m.node_id)
                .and_then(|(_, d)| *d);
            let id = m.node_id.clone();
            Box::pin(async move {
                match delay {
                    Some(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(id)
                    }
                    None => std::future::pending().await,
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_member_does_not_delay_the_others_and_the_whole_takes_the_slowest_ones_time() {
        let members = vec![member("a"), member("b"), member("c")];
        let finished = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let seen = finished.clone();
        let slow = delays(&[("a", Some(1_000)), ("b", Some(5_000)), ("c", Some(1_000))]);
        let answers = ask(members, Duration::from_secs(20), move |m| {
            let seen = seen.clone();
            let answer = slow(m);
            async move {
                let a = answer.await;
                seen.lock()
                    .unwrap()
                    .push((a.clone().unwrap(), Instant::now()));
                a
            }
        })
        .await;
        // Asked one after the other, the three would take 7 s; at once, as long as the slowest.
        assert_eq!(Instant::now() - started, Duration::from_secs(5));
        let ids: Vec<_> = answers
            .iter()
            .map(|(m, a)| (m.node_id.as_str(), a.as_deref().unwrap()))
            .collect();
        assert_eq!(
            ids,
            [("a", "a"), ("b", "b"), ("c", "c")],
            "in the order given"
        );
        for (id, at) in finished.lock().unwrap().iter() {
            let expected = if id == "b" { 5_000 } else { 1_000 };
            assert_eq!(
                *at - started,
                Duration::from_millis(expected),
                "{id} answered in its own time"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_never_answers_is_reported_at_the_timeout_beside_the_others_answers() {
        let members = vec![member("a"), member("dead"), member("c")];
        let started = Instant::now();
        let answers = ask(
            members,
            Duration::from_secs(2),
            delays(&[("a", Some(10)), ("dead", None), ("c", Some(10))]),
        )
        .await;
        assert_eq!(Instant::now() - started, Duration::from_secs(2));
        assert_eq!(answers[0].1.as_deref().unwrap(), "a");
        assert_eq!(
            answers[1].1.as_ref().unwrap_err(),
            &RemoteError::Deadline("no answer within 2000 ms".into())
        );
        assert_eq!(answers[2].1.as_deref().unwrap(), "c");
    }

    #[tokio::test]
    async fn nobody_to_ask_is_an_empty_answer_at_once() {
        let answers = ask(Vec::new(), Duration::from_secs(1), delays(&[])).await;
        assert!(answers.is_empty());
    }
}
