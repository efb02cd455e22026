//! A fixed pool of actors addressed by index, supervised: when a member fails (panics or returns an error), the
//! supervisor spawns a replacement at the same index with the same arguments and swaps it into the routing table,
//! so callers that route by index reach the new member on their next message. Calls in flight to the failed
//! member fail (their reply port is dropped); callers treat that like a timeout.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

/// The routing table of a pool: index → current member.
pub type Routes<M> = Arc<ArcSwap<Vec<ActorRef<M>>>>;

/// Supervises a pool of `A` actors.
pub struct PoolSupervisor<A>(A);

/// State of a [`PoolSupervisor`].
pub struct PoolState<A: Actor> {
    args: Vec<A::Arguments>,
    routes: Routes<A::Msg>,
    name: &'static str,
}

impl<A> Actor for PoolSupervisor<A>
where
    A: Actor + Clone,
    A::Arguments: Clone + Sync,
{
    type Msg = ();
    type State = PoolState<A>;
    type Arguments = (&'static str, Vec<A::Arguments>, Routes<A::Msg>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (name, args, routes): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut members = Vec::with_capacity(args.len());
        for a in &args {
            let (member, _) =
                Actor::spawn_linked(None, self.0.clone(), a.clone(), myself.get_cell()).await?;
            members.push(member);
        }
        routes.store(Arc::new(members));
        Ok(PoolState { args, routes, name })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let failed = match &event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(pool = state.name, error = %err, "pool member failed; restarting it");
                cell.get_id()
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => cell.get_id(),
            _ => return Ok(()),
        };
        if myself.get_status() != ractor::ActorStatus::Running {
            return Ok(());
        }
        let routes = state.routes.load_full();
        let Some(index) = routes.iter().position(|r| r.get_id() == failed) else {
            return Ok(());
        };
        let (member, _) = Actor::spawn_linked(
            None,
            self.0.clone(),
            state.args[index].clone(),
            myself.get_cell(),
        )
        .await?;
        let mut next = (*routes).clone();
        next[index] = member;
        state.routes.store(Arc::new(next));
        metrics::counter!("aisle_actor_restarts_total", "pool" => state.name).increment(1);
        Ok(())
    }
}

/// A running supervised pool.
pub struct Pool<A: Actor> {
    routes: Routes<A::Msg>,
    supervisor: ActorRef<()>,
}

impl<A: Actor> Clone for Pool<A> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            supervisor: self.supervisor.clone(),
        }
    }
}

impl<A> Pool<A>
where
    A: Actor + Clone,
    A::Arguments: Clone + Sync,
{
    /// Spawns one member per element of `args`, under a supervisor.
    ///
    /// # Errors
    /// When an actor cannot be spawned.
    pub async fn start(
        name: &'static str,
        actor: A,
        args: Vec<A::Arguments>,
    ) -> Result<Self, ractor::SpawnErr> {
        let routes: Routes<A::Msg> = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let (supervisor, _) =
            Actor::spawn(None, PoolSupervisor(actor), (name, args, routes.clone())).await?;
        Ok(Self { routes, supervisor })
    }

    /// The current member at `index`.
    pub fn member(&self, index: usize) -> ActorRef<A::Msg> {
        self.routes.load()[index].clone()
    }

    /// Every current member, by index.
    pub fn members(&self) -> Arc<Vec<ActorRef<A::Msg>>> {
        self.routes.load_full()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.routes.load().len()
    }

    /// Whether the pool has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the supervisor and every member.
    pub async fn stop(&self) {
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::RpcReplyPort;

    #[derive(Clone)]
    struct Echo;

    enum EchoMsg {
        Ask(RpcReplyPort<usize>),
        Crash,
    }

    impl Actor for Echo {
        type Msg = EchoMsg;
        type State = usize;
        type Arguments = usize;

        async fn pre_start(
            &self,
            _: ActorRef<EchoMsg>,
            index: usize,
        ) -> Result<usize, ActorProcessingErr> {
            Ok(index)
        }

        async fn handle(
            &self,
            _: ActorRef<EchoMsg>,
            msg: EchoMsg,
            index: &mut usize,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                EchoMsg::Ask(reply) => {
                    let _ = reply.send(*index);
                }
                EchoMsg::Crash => panic!("injected"),
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_member_is_restarted_at_its_index() {
        let pool = Pool::start("echo", Echo, vec![0, 1, 2]).await.unwrap();
        let before = pool.member(1);
        before.cast(EchoMsg::Crash).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.member(1).get_id() == before.get_id() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "member not restarted"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let answer = pool
            .member(1)
            .call(EchoMsg::Ask, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(matches!(answer, ractor::rpc::CallResult::Success(1)));
        pool.stop().await;
    }
}
