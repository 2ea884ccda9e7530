//! The failover state machine, pure: [`Machine::step`] takes an event and the time and
//! returns what to do. The driver owns sockets, timers and addresses.
//!
//! Rank: a higher priority wins; equal priorities are broken by the greater node name.
//! A passive node becomes active when no live peer is active and no live peer outranks
//! it (after one `dead_after` from start, so that it hears its peers first, unless it
//! has heard an active one already), or, with
//! `preempt`, when its priority is higher than the active peer's (equal priorities
//! never fail back). An active node steps down when an
//! active peer outranks it. A peer is live while its heartbeats keep arriving within
//! `dead_after`; a resign heartbeat ends it at once.
//!
//! A node in fault (its addresses could not be added) keeps listening but claims
//! nothing; [`Event::Retry`], on the driver's back-off timer, makes it passive again,
//! and it takes over from there as any passive node would, trying the addresses anew.

use std::collections::HashMap;

use super::wire::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Passive,
    Active,
    /// The addresses could not be taken: never claims to be active.
    Fault,
}

impl Role {
    /// What heartbeats say.
    pub fn state(self) -> State {
        match self {
            Role::Passive => State::Passive,
            Role::Active => State::Active,
            Role::Fault => State::Fault,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    Heartbeat {
        from: &'a str,
        priority: u8,
        state: State,
    },
    /// Time passed (the driver ticks every `interval`).
    Tick,
    /// A graceful stop.
    Shutdown,
    /// Adding an address failed.
    VipFailed,
    /// Time to try again after a fault.
    Retry,
    /// The peer's process ended without resigning (see `exit`): it is gone at once,
    /// as if it had resigned.
    Exited { from: &'a str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Add the addresses, announce them (gratuitous ARP), run `on_active`.
    BecomeActive,
    /// Remove the addresses, run `on_passive`.
    BecomePassive,
    /// Announce the addresses again: a dual-active conflict resolved in our favour, or
    /// a peer came back and may hold stale neighbour caches.
    Announce,
    /// Tell the peers we are leaving, so that one takes over at once.
    SendResign,
    /// Remove what addresses were added, and report the fault.
    EnterFault,
    /// Out of fault, passive again (and perhaps about to take over: a
    /// [`Action::BecomeActive`] may follow in the same step).
    LeaveFault,
}

#[derive(Debug, Clone)]
struct Peer {
    priority: u8,
    state: State,
    last_seen_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Machine {
    name: String,
    priority: u8,
    preempt: bool,
    dead_after_ms: u64,
    started_ms: u64,
    /// An active peer was heard: the node knows who is there without waiting out
    /// its first `dead_after`.
    heard_active: bool,
    role: Role,
    peers: HashMap<String, Peer>,
}

impl Machine {
    pub fn new(name: &str, priority: u8, preempt: bool, dead_after_ms: u64, now_ms: u64) -> Self {
        Machine {
            name: name.to_string(),
            priority,
            preempt,
            dead_after_ms,
            started_ms: now_ms,
            heard_active: false,
            role: Role::Passive,
            peers: HashMap::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// New settings from a reload; the peers heard so far stay. What they change is
    /// decided at the next step.
    pub fn reconfigure(&mut self, priority: u8, preempt: bool, dead_after_ms: u64) {
        self.priority = priority;
        self.preempt = preempt;
        self.dead_after_ms = dead_after_ms;
    }

    /// Milliseconds since the most recent heartbeat of any peer.
    pub fn peer_last_seen_ms(&self, now_ms: u64) -> Option<u64> {
        self.peers
            .values()
            .map(|p| now_ms.saturating_sub(p.last_seen_ms))
            .min()
    }

    /// Whether `name` is among the peers heard and not yet gone.
    pub fn knows(&self, name: &str) -> bool {
        self.peers.contains_key(name)
    }

    fn outranks(&self, priority: u8, name: &str) -> bool {
        (self.priority, self.name.as_str()) > (priority, name)
    }

    fn alive(&self, p: &Peer, now_ms: u64) -> bool {
        now_ms.saturating_sub(p.last_seen_ms) <= self.dead_after_ms
    }

    fn set(&mut self, role: Role, action: Action, out: &mut Vec<Action>) {
        if self.role != role {
            self.role = role;
            out.push(action);
        }
    }

    pub fn step(&mut self, now_ms: u64, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Heartbeat {
                from,
                priority,
                state,
            } => {
                if from == self.name {
                    return out;
                }
                let was_alive = self.peers.get(from).is_some_and(|p| self.alive(p, now_ms));
                self.heard_active |= state == State::Active;
                if state == State::Resign {
                    self.peers.remove(from);
                } else {
                    self.peers.insert(
                        from.to_string(),
                        Peer {
                            priority,
                            state,
                            last_seen_ms: now_ms,
                        },
                    );
                }
                if self.role == Role::Fault {
                    // Listening, so that a retry knows who is there; claiming nothing.
                    return out;
                }
                if self.role == Role::Active && state == State::Active {
                    if self.outranks(priority, from) {
                        out.push(Action::Announce);
                    } else {
                        self.set(Role::Passive, Action::BecomePassive, &mut out);
                    }
                } else if self.role == Role::Active && !was_alive && state != State::Resign {
                    out.push(Action::Announce);
                }
                self.evaluate(now_ms, &mut out);
            }
            Event::Tick => {
                let dead_after = self.dead_after_ms;
                self.peers
                    .retain(|_, p| now_ms.saturating_sub(p.last_seen_ms) <= dead_after);
                self.evaluate(now_ms, &mut out);
            }
            Event::Shutdown => {
                if self.role == Role::Active {
                    out.push(Action::SendResign);
                    self.set(Role::Passive, Action::BecomePassive, &mut out);
                }
            }
            Event::VipFailed => {
                // Only an active node is adding addresses: a late report after it
                // gave the role up changes nothing.
                if self.role == Role::Active {
                    self.role = Role::Fault;
                    out.push(Action::EnterFault);
                }
            }
            Event::Exited { from } => {
                if self.peers.remove(from).is_some() {
                    self.evaluate(now_ms, &mut out);
                }
            }
            Event::Retry => {
                if self.role == Role::Fault {
                    self.role = Role::Passive;
                    out.push(Action::LeaveFault);
                    self.evaluate(now_ms, &mut out);
                }
            }
        }
        out
    }

    /// A passive node's decision to take over.
    fn evaluate(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if self.role != Role::Passive {
            return;
        }
        let mut any_active = false;
        let mut outranks_every_active = true;
        let mut better_passive = false;
        for (name, p) in self.peers.iter().filter(|(_, p)| self.alive(p, now_ms)) {
            let outranked = self.outranks(p.priority, name);
            match p.state {
                State::Active => {
                    any_active = true;
                    // Preemption needs a higher priority: equal priorities do not
                    // fail back (the name only settles two actives).
                    outranks_every_active &= self.priority > p.priority;
                }
                State::Passive => better_passive |= !outranked,
                State::Resign | State::Fault => {}
            }
        }
        let take_over = if any_active {
            self.preempt && outranks_every_active
        } else {
            let settled =
                self.heard_active || now_ms.saturating_sub(self.started_ms) >= self.dead_after_ms;
            settled && !better_passive
        };
        if take_over {
            self.set(Role::Active, Action::BecomeActive, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEAD: u64 = 700;

    fn hb(from: &str, priority: u8, state: State) -> Event<'_> {
        Event::Heartbeat {
            from,
            priority,
            state,
        }
    }

    #[test]
    fn a_lone_node_takes_over_after_dead_after() {
        let mut m = Machine::new("lb1", 150, true, DEAD, 0);
        assert!(m.step(100, Event::Tick).is_empty());
        assert_eq!(m.step(DEAD, Event::Tick), [Action::BecomeActive]);
        assert_eq!(m.role(), Role::Active);
    }

    #[test]
    fn a_passive_node_takes_over_when_the_active_goes_silent() {
        let mut m = Machine::new("lb2", 100, true, DEAD, 0);
        m.step(100, hb("lb1", 150, State::Active));
        assert!(m.step(750, Event::Tick).is_empty(), "heard lb1 650 ms ago");
        assert_eq!(m.step(801, Event::Tick), [Action::BecomeActive]);
    }

    #[test]
    fn a_resign_makes_the_passive_take_over_at_once() {
        let mut m = Machine::new("lb2", 100, true, DEAD, 0);
        m.step(900, hb("lb1", 150, State::Active));
        assert_eq!(
            m.step(950, hb("lb1", 150, State::Resign)),
            [Action::BecomeActive]
        );
    }

    #[test]
    fn an_exited_active_peer_is_taken_over_at_once_and_a_passive_one_changes_nothing() {
        let mut m = Machine::new("lb2", 100, true, DEAD, 0);
        m.step(900, hb("lb1", 150, State::Active));
        m.step(900, hb("lb3", 50, State::Passive));
        assert!(m.step(950, Event::Exited { from: "lb3" }).is_empty());
        assert!(m.step(960, Event::Exited { from: "nobody" }).is_empty());
        assert_eq!(
            m.step(1000, Event::Exited { from: "lb1" }),
            [Action::BecomeActive]
        );
        // Just started, it heard the active peer, which then exited: it need not wait
        // out its first dead_after to know who is there.
        let mut young = Machine::new("lb2", 100, true, DEAD, 0);
        young.step(10, hb("lb1", 150, State::Active));
        assert_eq!(
            young.step(20, Event::Exited { from: "lb1" }),
            [Action::BecomeActive]
        );
        // A node in fault claims nothing, whoever exits.
        let mut f = Machine::new("lb2", 100, true, DEAD, 0);
        f.step(DEAD, Event::Tick);
        f.step(DEAD, Event::VipFailed);
        f.step(900, hb("lb1", 150, State::Active));
        assert!(f.step(950, Event::Exited { from: "lb1" }).is_empty());
        assert_eq!(f.role(), Role::Fault);
    }

    #[test]
    fn preempt_takes_the_role_back_and_no_preempt_does_not() {
        let mut back = Machine::new("lb1", 150, true, DEAD, 0);
        assert_eq!(
            back.step(1000, hb("lb2", 100, State::Active)),
            [Action::BecomeActive]
        );
        let mut polite = Machine::new("lb1", 150, false, DEAD, 0);
        assert!(polite.step(1000, hb("lb2", 100, State::Active)).is_empty());
        assert_eq!(polite.role(), Role::Passive);
    }

    #[test]
    fn dual_active_resolves_by_rank_and_the_winner_announces_again() {
        let mut high = Machine::new("lb1", 150, true, DEAD, 0);
        high.step(DEAD, Event::Tick);
        let mut low = Machine::new("lb2", 100, true, DEAD, 0);
        low.step(DEAD, Event::Tick);
        assert_eq!(
            high.step(800, hb("lb2", 100, State::Active)),
            [Action::Announce]
        );
        assert_eq!(
            low.step(800, hb("lb1", 150, State::Active)),
            [Action::BecomePassive]
        );
    }

    #[test]
    fn equal_priorities_are_broken_by_the_greater_name() {
        let mut a = Machine::new("lb-a", 100, true, DEAD, 0);
        a.step(DEAD, Event::Tick);
        assert_eq!(
            a.step(800, hb("lb-b", 100, State::Active)),
            [Action::BecomePassive]
        );
    }

    #[test]
    fn a_returning_peer_is_announced_to_again() {
        let mut m = Machine::new("lb1", 150, true, DEAD, 0);
        m.step(DEAD, Event::Tick);
        assert_eq!(
            m.step(800, hb("lb2", 100, State::Passive)),
            [Action::Announce]
        );
        assert!(m.step(900, hb("lb2", 100, State::Passive)).is_empty());
        m.step(2000, Event::Tick);
        assert_eq!(
            m.step(2100, hb("lb2", 100, State::Passive)),
            [Action::Announce]
        );
    }

    #[test]
    fn shutdown_resigns_and_a_fault_never_claims_active() {
        let mut m = Machine::new("lb1", 150, true, DEAD, 0);
        m.step(DEAD, Event::Tick);
        assert_eq!(
            m.step(800, Event::Shutdown),
            [Action::SendResign, Action::BecomePassive]
        );
        let mut f = Machine::new("lb1", 150, true, DEAD, 0);
        assert!(
            f.step(10, Event::VipFailed).is_empty(),
            "a passive node adds nothing"
        );
        f.step(DEAD, Event::Tick);
        assert_eq!(f.role(), Role::Active);
        assert_eq!(f.step(DEAD + 10, Event::VipFailed), [Action::EnterFault]);
        assert!(f.step(5000, Event::Tick).is_empty());
        assert_eq!(f.role().state(), State::Fault);
    }

    #[test]
    fn a_retry_leaves_fault_and_takes_over_only_when_no_one_holds_the_role() {
        let mut alone = Machine::new("lb1", 150, true, DEAD, 0);
        alone.step(DEAD, Event::Tick);
        alone.step(DEAD + 10, Event::VipFailed);
        assert_eq!(
            alone.step(900, Event::Retry),
            [Action::LeaveFault, Action::BecomeActive]
        );
        assert_eq!(alone.role(), Role::Active);

        // A peer took over during the fault: the retry leaves fault and stays passive,
        // even with the higher priority (it was heard while in fault).
        let mut m = Machine::new("lb1", 150, true, DEAD, 0);
        m.step(DEAD, Event::Tick);
        m.step(DEAD + 10, Event::VipFailed);
        assert!(m.step(1500, hb("lb2", 100, State::Active)).is_empty());
        let mut polite = m.clone();
        polite.reconfigure(150, false, DEAD);
        assert_eq!(polite.step(1600, Event::Retry), [Action::LeaveFault]);
        assert_eq!(polite.role(), Role::Passive);
        // With preempt it takes the role back, as any returning node would.
        assert_eq!(
            m.step(1600, Event::Retry),
            [Action::LeaveFault, Action::BecomeActive]
        );
        // A retry of a node not in fault changes nothing.
        assert!(m.step(1700, Event::Retry).is_empty());
    }

    #[test]
    fn a_new_priority_from_a_reload_preempts_at_the_next_heartbeat() {
        let mut m = Machine::new("lb2", 100, true, DEAD, 0);
        assert!(m.step(100, hb("lb1", 150, State::Active)).is_empty());
        m.reconfigure(250, true, DEAD);
        assert_eq!(
            m.step(200, hb("lb1", 150, State::Active)),
            [Action::BecomeActive]
        );
    }

    proptest! {
        /// Live nodes exchanging heartbeats end with exactly one active: the best-ranked
        /// with preempt, any one without; and no step both takes and gives the role.
        #[test]
        fn live_nodes_converge_to_one_active(
            priorities in prop::collection::vec(1u8..4, 2..4),
            preempt in any::<bool>(),
            order in prop::collection::vec(any::<u8>(), 60),
            starts in prop::collection::vec(0u64..1500, 4),
        ) {
            let names: Vec<String> = (0..priorities.len()).map(|i| format!("n{i}")).collect();
            let mut nodes: Vec<Machine> = priorities
                .iter()
                .enumerate()
                .map(|(i, p)| Machine::new(&names[i], *p, preempt, DEAD, starts[i]))
                .collect();
            let mut now = 1500;
            for round in 0..30 {
                now += 200;
                for k in 0..nodes.len() {
                    let i = (k + usize::from(order[round % order.len()])) % nodes.len();
                    let (role, prio) = (nodes[i].role(), nodes[i].priority);
                    for (j, node) in nodes.iter_mut().enumerate() {
                        if i != j {
                            let acts = node.step(now, hb(&names[i], prio, role.state()));
                            let takes = acts.contains(&Action::BecomeActive);
                            let gives = acts.contains(&Action::BecomePassive);
                            prop_assert!(!(takes && gives), "{:?}", acts);
                        }
                    }
                }
                for n in nodes.iter_mut() {
                    let acts = n.step(now, Event::Tick);
                    prop_assert!(!(acts.contains(&Action::BecomeActive) && acts.contains(&Action::BecomePassive)));
                }
            }
            let active: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].role() == Role::Active).collect();
            prop_assert_eq!(active.len(), 1, "actives: {:?}", active);
            if preempt {
                // The role goes to a node of the highest priority (among equals, no
                // failing back).
                let best = priorities.iter().max().copied().unwrap();
                prop_assert_eq!(priorities[active[0]], best);
            }
        }
    }
}
