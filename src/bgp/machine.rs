//! One peer's session (RFC 4271 8), pure: [`Session::step`] takes an event and the
//! time and returns what to do; the speaker owns the socket and the clock.
//!
//! fulcrum opens the connection (it never listens), sends its OPEN, and once the
//! peer's OPEN and KEEPALIVE have come, keeps the peer's view of its routes equal to
//! the prefixes it is told to announce: an UPDATE for each change, nothing more. A
//! session that fails (a NOTIFICATION either way, the hold timer, a closed connection,
//! a connection that cannot be made) starts again after a back-off that doubles from
//! one second to thirty and resets once a session is established.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::wire::{self, code, Family, Message, Notification, Path};

/// The first wait before connecting again.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long to wait for the peer's OPEN (RFC 4271 8.2.2: a large value).
pub const OPEN_WAIT: Duration = Duration::from_secs(240);

/// What the session is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub local_as: u32,
    pub remote_as: u32,
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds: 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    /// The prefixes this session carries are of this family (the connection's own).
    pub family: Family,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connect => "connect",
            State::OpenSent => "open_sent",
            State::OpenConfirm => "open_confirm",
            State::Established => "established",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// Time passed: the timers that ran out fire.
    Tick,
    /// The connection is up; `local` is this side's address on it (the next hop).
    Connected {
        local: IpAddr,
    },
    ConnectFailed,
    Received(&'a Message),
    /// The peer sent bytes that do not decode: answer with this.
    Malformed(Notification),
    /// The peer closed the connection, or it failed.
    Closed,
    /// The prefixes (of this session's family) the peer should have from us.
    Routes(&'a BTreeSet<IpNet>),
    /// Stop for good: a Cease to the peer, no more connections.
    Stop,
}

/// What a message sent is, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Keepalive,
    Announce,
    Withdraw,
    Notification,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to the peer.
    Connect,
    Send(Kind, Vec<u8>),
    /// Close the connection.
    Close,
    /// The session is established.
    Up,
    /// The session, or an attempt at one, ended: why.
    Down(String),
}

#[derive(Debug)]
pub struct Session {
    settings: Settings,
    state: State,
    stopped: bool,
    /// Idle: when to connect again.
    retry_at: Option<Instant>,
    backoff: Duration,
    hold: Duration,
    hold_deadline: Option<Instant>,
    keepalive_at: Option<Instant>,
    local: Option<IpAddr>,
    path: Path,
    wanted: BTreeSet<IpNet>,
    /// What the peer has from us in this session.
    advertised: BTreeSet<IpNet>,
}

impl Session {
    /// A session that connects at the first tick.
    pub fn new(settings: Settings, now: Instant) -> Session {
        let path = Path {
            local_as: settings.local_as,
            external: settings.local_as != settings.remote_as,
            four_octet: false,
        };
        Session {
            settings,
            state: State::Idle,
            stopped: false,
            retry_at: Some(now),
            backoff: FIRST_BACKOFF,
            hold: Duration::ZERO,
            hold_deadline: None,
            keepalive_at: None,
            local: None,
            path,
            wanted: BTreeSet::new(),
            advertised: BTreeSet::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The prefixes the peer has from us now.
    pub fn advertised(&self) -> &BTreeSet<IpNet> {
        &self.advertised
    }

    /// The hold time agreed with the peer (zero before, or when either side said 0).
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// When [`Event::Tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.retry_at, self.hold_deadline, self.keepalive_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn step(&mut self, event: Event<'_>, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        match event {
            Event::Tick => self.tick(now, &mut out),
            Event::Connected { local } if self.state == State::Connect => {
                self.local = Some(local);
                let open = wire::open(
                    self.settings.local_as,
                    self.settings.hold_time,
                    self.settings.router_id,
                    self.settings.family,
                );
                out.push(Action::Send(Kind::Open, open));
                self.state = State::OpenSent;
                self.hold_deadline = Some(now + OPEN_WAIT);
            }
            Event::Connected { .. } => out.push(Action::Close),
            Event::ConnectFailed if self.state == State::Connect => {
                self.restart(now, "connection failed".into(), &mut out);
            }
            Event::ConnectFailed => {}
            Event::Received(m) => self.received(m, now, &mut out),
            Event::Malformed(n) => self.fail(n, now, &mut out),
            Event::Closed => {
                if self.state != State::Idle {
                    self.restart(now, "connection closed by the peer".into(), &mut out);
                }
            }
            Event::Routes(routes) => {
                self.wanted.clone_from(routes);
                self.sync(&mut out);
            }
            Event::Stop => {
                if matches!(
                    self.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                ) {
                    let cease =
                        Notification::new(code::CEASE, code::CEASE_ADMINISTRATIVE_SHUTDOWN, &[]);
                    out.push(Action::Send(Kind::Notification, wire::notification(&cease)));
                }
                if self.state != State::Idle {
                    out.push(Action::Close);
                    out.push(Action::Down("stopped".into()));
                }
                self.reset();
                self.retry_at = None;
                self.stopped = true;
            }
        }
        out
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.state == State::Idle {
            if self.retry_at.is_some_and(|t| t <= now) {
                self.retry_at = None;
                self.state = State::Connect;
                out.push(Action::Connect);
            }
            return;
        }
        if self.hold_deadline.is_some_and(|t| t <= now) {
            let n = Notification::new(code::HOLD_TIMER_EXPIRED, 0, &[]);
            self.fail(n, now, out);
            return;
        }
        if let Some(at) = self.keepalive_at.filter(|t| *t <= now) {
            out.push(Action::Send(Kind::Keepalive, wire::keepalive()));
            let interval = self.hold / 3;
            // A late tick sends one keepalive, not the ones it missed.
            self.keepalive_at = Some((at + interval).max(now));
        }
    }

    fn received(&mut self, m: &Message, now: Instant, out: &mut Vec<Action>) {
        let fsm = |sub: u8| Notification::new(code::FSM, sub, &[]);
        match (self.state, m) {
            (State::Idle | State::Connect, _) => {}
            (_, Message::Notification(n)) => {
                let why = format!("notification from the peer: {n}");
                self.restart(now, why, out);
            }
            (State::OpenSent, Message::Open(open)) => self.open(open, now, out),
            (State::OpenSent, _) => self.fail(fsm(code::FSM_IN_OPEN_SENT), now, out),
            (State::OpenConfirm, Message::Keepalive) => {
                self.state = State::Established;
                self.backoff = FIRST_BACKOFF;
                self.refresh_hold(now);
                out.push(Action::Up);
                self.sync(out);
            }
            (State::OpenConfirm, _) => self.fail(fsm(code::FSM_IN_OPEN_CONFIRM), now, out),
            (State::Established, Message::Keepalive | Message::Update) => {
                self.refresh_hold(now);
            }
            (State::Established, Message::Open(_)) => {
                self.fail(fsm(code::FSM_IN_ESTABLISHED), now, out);
            }
        }
    }

    fn open(&mut self, open: &wire::Open, now: Instant, out: &mut Vec<Action>) {
        if open.asn != self.settings.remote_as {
            let data = u16::try_from(open.asn)
                .unwrap_or(wire::AS_TRANS as u16)
                .to_be_bytes();
            let n = Notification::new(code::OPEN, code::OPEN_BAD_PEER_AS, &data);
            return self.fail(n, now, out);
        }
        if !self.path.external && open.router_id == self.settings.router_id {
            let n = Notification::new(code::OPEN, code::OPEN_BAD_IDENTIFIER, &[]);
            return self.fail(n, now, out);
        }
        self.path.four_octet = open.four_octet;
        let hold = open.hold_time.min(self.settings.hold_time);
        self.hold = Duration::from_secs(u64::from(hold));
        out.push(Action::Send(Kind::Keepalive, wire::keepalive()));
        self.state = State::OpenConfirm;
        self.refresh_hold(now);
        self.keepalive_at = (hold > 0).then(|| now + self.hold / 3);
    }

    fn refresh_hold(&mut self, now: Instant) {
        self.hold_deadline = (!self.hold.is_zero()).then(|| now + self.hold);
    }

    /// Brings the peer's view of our routes to `wanted`.
    fn sync(&mut self, out: &mut Vec<Action>) {
        if self.state != State::Established {
            return;
        }
        let gone: Vec<IpNet> = self.advertised.difference(&self.wanted).copied().collect();
        let new: Vec<IpNet> = self.wanted.difference(&self.advertised).copied().collect();
        if !gone.is_empty() {
            for m in wire::withdraw(&gone, self.settings.family) {
                out.push(Action::Send(Kind::Withdraw, m));
            }
        }
        if let (false, Some(local)) = (new.is_empty(), self.local) {
            for m in wire::announce(&new, local, self.path) {
                out.push(Action::Send(Kind::Announce, m));
            }
        }
        self.advertised.clone_from(&self.wanted);
    }

    /// Tells the peer why, and starts again after the back-off.
    fn fail(&mut self, n: Notification, now: Instant, out: &mut Vec<Action>) {
        if self.state == State::Idle || self.state == State::Connect {
            return;
        }
        out.push(Action::Send(Kind::Notification, wire::notification(&n)));
        self.restart(now, format!("sent notification: {n}"), out);
    }

    fn restart(&mut self, now: Instant, why: String, out: &mut Vec<Action>) {
        if self.state != State::Connect {
            out.push(Action::Close);
        }
        out.push(Action::Down(why));
        self.reset();
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn reset(&mut self) {
        self.state = State::Idle;
        self.hold = Duration::ZERO;
        self.hold_deadline = None;
        self.keepalive_at = None;
        self.local = None;
        self.path.four_octet = false;
        self.advertised.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            local_as: 65011,
            remote_as: 65000,
            router_id: Ipv4Addr::new(192, 0, 2, 11),
            hold_time: 9,
            family: Family::V4,
        }
    }

    fn peer_open(asn: u32, hold: u16) -> Message {
        Message::Open(wire::Open {
            asn,
            hold_time: hold,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            four_octet: true,
        })
    }

    fn routes(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Send(k, _) => format!("send {k:?}"),
                Action::Down(_) => "down".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A session that connected at `t0` and sent its OPEN.
    fn open_sent(settings: Settings, t0: Instant) -> Session {
        let mut s = Session::new(settings, t0);
        assert_eq!(s.step(Event::Tick, t0), vec![Action::Connect]);
        let local = "10.0.1.2".parse().unwrap();
        assert_eq!(
            kinds(&s.step(Event::Connected { local }, t0)),
            ["send Open"]
        );
        assert_eq!(s.state(), State::OpenSent);
        s
    }

    /// The code and subcode of the NOTIFICATION that `out` starts with.
    fn notification(out: &[Action]) -> (u8, u8) {
        let Some(Action::Send(Kind::Notification, bytes)) = out.first() else {
            panic!("no notification first: {out:?}")
        };
        (bytes[19], bytes[20])
    }

    /// A session taken to Established at `t0`, with the peer's hold time of 6.
    fn established(t0: Instant) -> Session {
        let mut s = open_sent(settings(), t0);
        assert_eq!(
            kinds(&s.step(Event::Received(&peer_open(65000, 6)), t0)),
            ["send Keepalive"]
        );
        assert_eq!(s.state(), State::OpenConfirm);
        assert_eq!(
            kinds(&s.step(Event::Received(&Message::Keepalive), t0)),
            ["Up"]
        );
        s
    }

    #[test]
    fn establishes_and_announces_what_it_is_told() {
        let t0 = Instant::now();
        let mut s = Session::new(settings(), t0);
        // Routes known before the session is up go out once it is.
        assert!(s
            .step(Event::Routes(&routes(&["198.51.100.10/32"])), t0)
            .is_empty());
        s.step(Event::Tick, t0);
        s.step(
            Event::Connected {
                local: "10.0.1.2".parse().unwrap(),
            },
            t0,
        );
        s.step(Event::Received(&peer_open(65000, 6)), t0);
        let up = s.step(Event::Received(&Message::Keepalive), t0);
        assert_eq!(kinds(&up), ["Up", "send Announce"]);
        assert_eq!(s.hold(), Duration::from_secs(6));
        assert_eq!(s.advertised(), &routes(&["198.51.100.10/32"]));
        // Same set: nothing. Empty set: a withdraw.
        assert!(s
            .step(Event::Routes(&routes(&["198.51.100.10/32"])), t0)
            .is_empty());
        let w = s.step(Event::Routes(&routes(&[])), t0);
        assert_eq!(kinds(&w), ["send Withdraw"]);
        assert!(s.advertised().is_empty());
    }

    #[test]
    fn keepalives_every_third_of_the_hold_time_and_the_hold_timer_ends_it() {
        let t0 = Instant::now();
        let mut s = established(t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(2)));
        let ka = s.step(Event::Tick, t0 + Duration::from_secs(2));
        assert_eq!(kinds(&ka), ["send Keepalive"]);
        // The peer's keepalive refreshes the hold timer.
        let t5 = t0 + Duration::from_secs(5);
        s.step(Event::Received(&Message::Keepalive), t5);
        assert!(kinds(&s.step(Event::Tick, t0 + Duration::from_secs(7))) == ["send Keepalive"]);
        // Silence: at t5 + 6 the hold timer runs out.
        let out = s.step(Event::Tick, t5 + Duration::from_secs(6));
        assert_eq!(kinds(&out), ["send Notification", "Close", "down"]);
        assert_eq!(notification(&out), (code::HOLD_TIMER_EXPIRED, 0));
        assert_eq!(s.state(), State::Idle);
        assert!(s.advertised().is_empty());
    }

    #[test]
    fn hold_time_zero_means_no_keepalives() {
        let t0 = Instant::now();
        let mut s = open_sent(settings(), t0);
        s.step(Event::Received(&peer_open(65000, 0)), t0);
        s.step(Event::Received(&Message::Keepalive), t0);
        assert_eq!(s.state(), State::Established);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_wrong_peer_as_gets_bad_peer_as_and_a_back_off() {
        let t0 = Instant::now();
        let mut s = open_sent(settings(), t0);
        let out = s.step(Event::Received(&peer_open(65001, 9)), t0);
        assert_eq!(kinds(&out), ["send Notification", "Close", "down"]);
        assert_eq!(notification(&out), (code::OPEN, code::OPEN_BAD_PEER_AS));
        assert_eq!(s.next_deadline(), Some(t0 + FIRST_BACKOFF));
        assert!(s.step(Event::Tick, t0).is_empty());
        assert_eq!(
            s.step(Event::Tick, t0 + FIRST_BACKOFF),
            vec![Action::Connect]
        );
    }

    #[test]
    fn back_off_doubles_to_its_cap_and_resets_once_established() {
        let mut t = Instant::now();
        let mut s = Session::new(settings(), t);
        let mut waits = Vec::new();
        for _ in 0..7 {
            assert_eq!(s.step(Event::Tick, t), vec![Action::Connect]);
            s.step(Event::ConnectFailed, t);
            let next = s.next_deadline().unwrap();
            waits.push((next - t).as_secs());
            t = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        s.step(Event::Tick, t);
        s.step(
            Event::Connected {
                local: "10.0.1.2".parse().unwrap(),
            },
            t,
        );
        s.step(Event::Received(&peer_open(65000, 9)), t);
        s.step(Event::Received(&Message::Keepalive), t);
        s.step(Event::Closed, t);
        assert_eq!(s.next_deadline(), Some(t + FIRST_BACKOFF));
    }

    #[test]
    fn unexpected_messages_are_fsm_errors_by_state() {
        let t0 = Instant::now();
        let mut s = open_sent(settings(), t0);
        let out = s.step(Event::Received(&Message::Update), t0);
        assert_eq!(notification(&out), (code::FSM, code::FSM_IN_OPEN_SENT));

        let mut s = established(t0);
        let out = s.step(Event::Received(&peer_open(65000, 9)), t0);
        assert_eq!(notification(&out), (code::FSM, code::FSM_IN_ESTABLISHED));
    }

    #[test]
    fn malformed_input_is_answered_and_the_session_restarts() {
        let t0 = Instant::now();
        let mut s = established(t0);
        let n = Notification::new(code::HEADER, code::HEADER_BAD_TYPE, &[9]);
        let out = s.step(Event::Malformed(n), t0);
        assert_eq!(kinds(&out), ["send Notification", "Close", "down"]);
        assert_eq!(s.state(), State::Idle);
    }

    #[test]
    fn a_peer_notification_ends_the_session_without_an_answer() {
        let t0 = Instant::now();
        let mut s = established(t0);
        let n = Message::Notification(Notification::new(6, 2, &[]));
        assert_eq!(kinds(&s.step(Event::Received(&n), t0)), ["Close", "down"]);
    }

    #[test]
    fn stop_sends_cease_and_never_reconnects() {
        let t0 = Instant::now();
        let mut s = established(t0);
        let out = s.step(Event::Stop, t0);
        assert_eq!(kinds(&out), ["send Notification", "Close", "down"]);
        assert_eq!(s.next_deadline(), None);
        assert!(s
            .step(Event::Tick, t0 + Duration::from_secs(100))
            .is_empty());
    }

    #[test]
    fn ibgp_refuses_its_own_router_id() {
        let t0 = Instant::now();
        let mut cfg = settings();
        cfg.remote_as = cfg.local_as;
        let mut s = open_sent(cfg.clone(), t0);
        let open = Message::Open(wire::Open {
            asn: cfg.local_as,
            hold_time: 9,
            router_id: cfg.router_id,
            four_octet: true,
        });
        let out = s.step(Event::Received(&open), t0);
        assert_eq!(notification(&out), (code::OPEN, code::OPEN_BAD_IDENTIFIER));
    }
}
