//! A userspace WAN between regions: UDP relays that delay, jitter, drop and cut datagrams, and
//! TCP relays that delay and cut byte streams.
//!
//! The kernel here has no netem, and everything between homeport regions is QUIC over UDP, so a
//! relay in front of each remote address is enough. A test asks [`Wan::relay`] for a local
//! address that stands for `target` as seen from one region and hands that address to the
//! region's processes instead of the real one. Conditions are per ordered region pair (a path's
//! two directions often differ) and may change at any moment while traffic flows, which is how
//! fault schedules cut and heal regions.
//!
//! [`Wan::relay_tcp`] does the same for TCP (peers such as etcd speak gRPC over TCP), under the
//! same per-pair [`LinkConditions`], with what a byte stream allows:
//! - delay and jitter apply to each chunk read from a socket, and a chunk never leaves before the
//!   one read before it on the same connection (a TCP stream stays in order; jitter only ever
//!   stretches gaps);
//! - `loss` and `reorder` do not apply: TCP retransmits and reorders nothing, and emulating its
//!   retransmission timeouts is out of scope;
//! - `partitioned` HOLDS: nothing crosses, connections stay open, new connections are accepted
//!   but not connected upstream; after a heal the held bytes arrive one delay later, in order, as
//!   TCP's retransmissions would after a partition shorter than its timeouts. Applications notice
//!   a partition by their own timeouts, as on a real network. A reset or a read error on one side
//!   closes both sides at once;
//! - `bandwidth_bytes_per_s` serializes chunks through the same bottleneck as the direction's UDP
//!   datagrams; when its queue is longer than [`BOTTLENECK_QUEUE_MAX_MS`] the relay stops reading
//!   (backpressure, as a full TCP window) instead of dropping;
//! - the handshake is local: a connection costs no round trip to set up.
//!
//! Every relay, NAT session and TCP connection is a tokio task that ends when the last [`Wan`]
//! handle is dropped, so a test leaves no sockets or tasks behind.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

/// The largest UDP payload; relays read into buffers this big so no datagram is ever truncated.
pub const MAX_DATAGRAM_BYTES: usize = 65_535;
/// How long a client's upstream socket (its NAT mapping) lives without traffic either way. Well
/// above QUIC's keep-alive interval, so live connections never lose their mapping; a mapping that
/// did expire is rebuilt on the next datagram (QUIC survives the new source port).
pub const DEFAULT_SESSION_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Upper bound on `delay_ms + jitter_ms`: far beyond any real path, and it keeps release times
/// far from `Instant` overflow.
pub const MAX_ONE_WAY_DELAY_MS: u64 = 600_000;
/// With a bandwidth cap, the bottleneck's buffer, as time to drain it: a datagram that would wait
/// longer than this behind earlier ones is dropped (tail drop, like a router's full queue), so an
/// overloaded link shows loss instead of ever-growing delay.
pub const BOTTLENECK_QUEUE_MAX_MS: u64 = 500;
/// Bytes waiting in one relay direction's delay line; beyond this datagrams are dropped (counted
/// in `dropped_overflow`) so a flood cannot exhaust memory. 64 MiB holds over 4 s of 1 Gbit/s.
const DELAY_LINE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// NAT sessions (distinct client addresses) one relay keeps; more are refused (`dropped_overflow`).
const MAX_SESSIONS_PER_RELAY: usize = 4096;
/// Pause after a failed socket read, so a socket in a persistent error state cannot spin a core.
const IO_ERROR_BACKOFF_MS: u64 = 10;
/// SO_RCVBUF and SO_SNDBUF asked for on every UDP relay socket: bursts of a catch-up saturate
/// the kernel's default (~200 KiB) and show up as `RcvbufErrors`. Linux caps the request at
/// `net.core.rmem_max` / `wmem_max` (then doubles it for bookkeeping); see
/// [`udp_socket_buffers`] for what was granted.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Bytes one direction of one TCP connection holds in its delay line; beyond it the relay stops
/// reading that socket until the line drains (backpressure, like a TCP receive window).
/// 8 MiB keeps ~280 MB/s flowing through a 30 ms delay.
pub const TCP_DELAY_LINE_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Largest chunk one read takes from a TCP socket: the unit delay and jitter apply to.
const TCP_READ_CHUNK_BYTES: usize = 64 * 1024;
/// How often a held TCP chunk looks whether its link has healed.
const TCP_PARTITION_POLL_MS: u64 = 5;

/// What one direction of a region pair does to each datagram.
///
/// The default is a perfect link: no delay, no loss, FIFO, no bandwidth cap.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkConditions {
    /// One-way propagation delay: the floor every datagram pays.
    pub delay_ms: u64,
    /// Extra delay drawn uniformly from `0..=jitter_ms` per datagram. Only added, never
    /// subtracted (queueing only ever adds to propagation), so `delay_ms` stays a lower bound.
    pub jitter_ms: u64,
    /// Probability (0..=1) that a datagram is dropped, drawn from the [`Wan`]'s seeded RNG.
    pub loss: f64,
    /// Drop everything. Also checked when a delayed datagram is due, so a partition cuts off
    /// datagrams already in flight, and none from before it arrive after a heal.
    pub partitioned: bool,
    /// Let jitter reorder datagrams. Off (the default), each datagram leaves no earlier than the
    /// one before it, as on a real path; on, independent jitter per datagram reorders heavily at
    /// high packet rates, which QUIC tolerates but reads as loss (spurious retransmissions).
    pub reorder: bool,
    /// Bandwidth cap in bytes per second (a serializing bottleneck with a
    /// [`BOTTLENECK_QUEUE_MAX_MS`] buffer), shared by every relay of this direction. `None`: no cap.
    pub bandwidth_bytes_per_s: Option<u64>,
}

impl LinkConditions {
    /// A link with only a one-way delay.
    pub fn delay(delay_ms: u64) -> Self {
        LinkConditions {
            delay_ms,
            ..LinkConditions::default()
        }
    }

    /// Panics on conditions no link can have: they are a bug in the test that set them.
    fn assert_valid(&self) {
        assert!(
            (0.0..=1.0).contains(&self.loss),
            "LinkConditions::loss is {}; it is a probability, use a value in 0.0..=1.0",
            self.loss
        );
        assert!(
            self.delay_ms.saturating_add(self.jitter_ms) <= MAX_ONE_WAY_DELAY_MS,
            "LinkConditions delay_ms + jitter_ms is {} ms, above MAX_ONE_WAY_DELAY_MS ({MAX_ONE_WAY_DELAY_MS}); use `partitioned: true` to cut a link",
            self.delay_ms.saturating_add(self.jitter_ms)
        );
        assert!(
            self.bandwidth_bytes_per_s != Some(0),
            "LinkConditions::bandwidth_bytes_per_s is Some(0); use `partitioned: true` to cut a link, or None for no cap"
        );
    }
}

/// What happened to the datagrams of one direction of a region pair, over all its relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Datagrams sent on to their destination.
    pub datagrams_forwarded: u64,
    /// Payload bytes of `datagrams_forwarded`.
    pub bytes_forwarded: u64,
    /// Dropped by `loss`.
    pub dropped_loss: u64,
    /// Dropped because the link was partitioned on arrival or when due.
    pub dropped_partition: u64,
    /// Dropped because the bandwidth cap's queue was full.
    pub dropped_congestion: u64,
    /// Dropped by the emulator's own bounds (delay line bytes, NAT sessions per relay), or
    /// because an upstream socket could not be opened: not a network condition; non-zero means
    /// the test overloads the emulator.
    pub dropped_overflow: u64,
    /// Datagrams the operating system refused to send.
    pub send_errors: u64,
    /// TCP connections accepted by relays of this direction (counted on the client → target
    /// direction only).
    pub tcp_connections: u64,
    /// TCP payload bytes delivered in this direction.
    pub tcp_bytes_forwarded: u64,
    /// TCP connections whose upstream connect to the target failed (closed at once).
    pub tcp_connect_errors: u64,
}

/// Why a relay could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error(
        "cannot open a relay socket on {addr}: {source}; use an IP this host has (on Linux all of 127.0.0.0/8 is loopback) and port 0"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Settings of a [`Wan`] beyond its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanOptions {
    /// Seeds every relay's RNG (loss and jitter): the same seed and the same datagrams in the
    /// same order through a relay give the same drops and delays.
    pub seed: u64,
    /// See [`DEFAULT_SESSION_IDLE_TIMEOUT_MS`]. Keep it above the largest delay you set, or a
    /// mapping may expire while its datagrams are still in flight.
    pub session_idle_timeout_ms: u64,
}

impl Default for WanOptions {
    fn default() -> Self {
        WanOptions {
            seed: 0,
            session_idle_timeout_ms: DEFAULT_SESSION_IDLE_TIMEOUT_MS,
        }
    }
}

/// The emulated network between regions. Cheap to clone; every clone controls the same links.
#[derive(Clone)]
pub struct Wan {
    inner: Arc<Inner>,
}

struct Inner {
    options: WanOptions,
    registry: Mutex<Registry>,
    sessions_open: Arc<AtomicUsize>,
    tcp_open: Arc<AtomicUsize>,
    /// Never sent on: dropping it (with the last `Wan`) is the signal every task waits for.
    shutdown: watch::Sender<()>,
}

#[derive(Default)]
struct Registry {
    links: HashMap<(String, String), Arc<Link>>,
    /// Regions cut off by `partition_region`, so links created later start partitioned too.
    isolated: HashSet<String>,
}

impl Wan {
    /// A WAN with perfect links between all regions until told otherwise.
    pub fn new(seed: u64) -> Wan {
        Wan::with_options(WanOptions {
            seed,
            ..WanOptions::default()
        })
    }

    pub fn with_options(options: WanOptions) -> Wan {
        assert!(
            options.session_idle_timeout_ms > 0,
            "WanOptions::session_idle_timeout_ms is 0; mappings would expire before any reply, use e.g. {DEFAULT_SESSION_IDLE_TIMEOUT_MS}"
        );
        let (shutdown, _) = watch::channel(());
        Wan {
            inner: Arc::new(Inner {
                options,
                registry: Mutex::new(Registry::default()),
                sessions_open: Arc::new(AtomicUsize::new(0)),
                tcp_open: Arc::new(AtomicUsize::new(0)),
                shutdown,
            }),
        }
    }

    /// Starts a relay on `bind_ip` (port chosen by the kernel) that region `from_region`'s
    /// processes use instead of `target`, an address in region `to_region`. Datagrams towards
    /// `target` get the `(from, to)` conditions, replies the `(to, from)` ones. Each client
    /// address gets its own upstream socket, so replies reach the client that asked.
    pub async fn relay(
        &self,
        from_region: &str,
        to_region: &str,
        target: SocketAddr,
        bind_ip: IpAddr,
    ) -> Result<SocketAddr, WanError> {
        let bind_addr = SocketAddr::new(bind_ip, 0);
        let bind_err = |source| WanError::Bind {
            addr: bind_addr,
            source,
        };
        let front = bind_udp(bind_addr).map_err(bind_err)?;
        let local = front.local_addr().map_err(bind_err)?;
        let there = self.link(from_region, to_region);
        let back = self.link(to_region, from_region);
        let ordinal = there.relays_started.fetch_add(1, Ordering::Relaxed);
        let seed = |direction: u64| {
            relay_seed(
                self.inner.options.seed,
                from_region,
                to_region,
                ordinal,
                direction,
            )
        };
        let forward = Arc::new(DelayLine::new(there, seed(0)));
        let reverse = Arc::new(DelayLine::new(back, seed(1)));
        let upstream_ip = upstream_ip(bind_ip, target);
        let relay = Arc::new(Relay {
            front: Arc::new(front),
            target,
            upstream_ip,
            sessions: Mutex::new(HashMap::new()),
            forward: forward.clone(),
            reverse: reverse.clone(),
            idle_timeout: Duration::from_millis(self.inner.options.session_idle_timeout_ms),
            sessions_open: self.inner.sessions_open.clone(),
            shutdown: self.inner.shutdown.subscribe(),
        });
        tokio::spawn(forward.run(self.inner.shutdown.subscribe()));
        tokio::spawn(reverse.run(self.inner.shutdown.subscribe()));
        tokio::spawn(relay.run_front(self.inner.shutdown.subscribe()));
        Ok(local)
    }

    /// Starts a TCP relay on `bind_ip` (port chosen by the kernel) that region `from_region`'s
    /// processes use instead of `target`, a TCP listener in region `to_region`. Bytes towards
    /// `target` get the `(from, to)` conditions, bytes back the `(to, from)` ones; what applies
    /// to a stream is in the module documentation. Each accepted connection gets its own
    /// upstream connection, opened from `bind_ip` when the families match.
    pub async fn relay_tcp(
        &self,
        from_region: &str,
        to_region: &str,
        target: SocketAddr,
        bind_ip: IpAddr,
    ) -> Result<SocketAddr, WanError> {
        let bind_addr = SocketAddr::new(bind_ip, 0);
        let bind_err = |source| WanError::Bind {
            addr: bind_addr,
            source,
        };
        let listener = TcpListener::bind(bind_addr).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let there = self.link(from_region, to_region);
        let ordinal = there.relays_started.fetch_add(1, Ordering::Relaxed);
        let relay = Arc::new(TcpRelay {
            target,
            upstream_ip: upstream_ip(bind_ip, target),
            there,
            back: self.link(to_region, from_region),
            seed: relay_seed(self.inner.options.seed, from_region, to_region, ordinal, 2),
            connections: AtomicU64::new(0),
            open: self.inner.tcp_open.clone(),
            shutdown: self.inner.shutdown.subscribe(),
        });
        tokio::spawn(relay.run_listener(listener));
        Ok(local)
    }

    /// TCP connections open over all TCP relays (accepted and not yet closed).
    pub fn tcp_connections(&self) -> usize {
        self.inner.tcp_open.load(Ordering::SeqCst)
    }

    /// Sets the conditions of datagrams from `from`'s side to `to`'s side.
    pub fn set(&self, from: &str, to: &str, conditions: LinkConditions) {
        conditions.assert_valid();
        lock(&self.link(from, to).state).conditions = conditions;
    }

    /// Sets the same conditions in both directions between `a` and `b`.
    pub fn set_both(&self, a: &str, b: &str, conditions: LinkConditions) {
        self.set(a, b, conditions);
        self.set(b, a, conditions);
    }

    /// The current conditions from `from` to `to`.
    pub fn conditions(&self, from: &str, to: &str) -> LinkConditions {
        lock(&self.link(from, to).state).conditions
    }

    /// Cuts both directions between `a` and `b`, keeping their other conditions for the heal.
    pub fn partition(&self, a: &str, b: &str) {
        self.set_partitioned(a, b, true);
    }

    /// Undoes [`Wan::partition`] between `a` and `b` (both directions).
    pub fn heal(&self, a: &str, b: &str) {
        self.set_partitioned(a, b, false);
    }

    /// Cuts `region` off from every other region, including links first used later.
    pub fn partition_region(&self, region: &str) {
        let mut registry = lock(&self.inner.registry);
        registry.isolated.insert(region.to_owned());
        for ((from, to), link) in &registry.links {
            if from == region || to == region {
                lock(&link.state).conditions.partitioned = true;
            }
        }
    }

    /// Undoes [`Wan::partition_region`]: every link of `region` is healed.
    pub fn heal_region(&self, region: &str) {
        let mut registry = lock(&self.inner.registry);
        registry.isolated.remove(region);
        for ((from, to), link) in &registry.links {
            if from == region || to == region {
                lock(&link.state).conditions.partitioned = false;
            }
        }
    }

    /// Heals every partition; other conditions stay.
    pub fn heal_all(&self) {
        let mut registry = lock(&self.inner.registry);
        registry.isolated.clear();
        for link in registry.links.values() {
            lock(&link.state).conditions.partitioned = false;
        }
    }

    /// Counters of the direction `from` → `to` since the link was first used.
    pub fn stats(&self, from: &str, to: &str) -> LinkStats {
        self.link(from, to).counters.snapshot()
    }

    /// Upstream sockets (NAT mappings) open over all relays; they close after
    /// `session_idle_timeout_ms` without traffic.
    pub fn nat_sessions(&self) -> usize {
        self.inner.sessions_open.load(Ordering::SeqCst)
    }

    fn set_partitioned(&self, a: &str, b: &str, partitioned: bool) {
        for (from, to) in [(a, b), (b, a)] {
            lock(&self.link(from, to).state).conditions.partitioned = partitioned;
        }
    }

    /// The link `from` → `to`, created with perfect conditions (partitioned if either region is
    /// isolated) on first use.
    fn link(&self, from: &str, to: &str) -> Arc<Link> {
        let mut registry = lock(&self.inner.registry);
        let isolated = registry.isolated.contains(from) || registry.isolated.contains(to);
        registry
            .links
            .entry((from.to_owned(), to.to_owned()))
            .or_insert_with(|| {
                Arc::new(Link {
                    state: Mutex::new(LinkState {
                        conditions: LinkConditions {
                            partitioned: isolated,
                            ..LinkConditions::default()
                        },
                        bottleneck_free_at: None,
                    }),
                    counters: Counters::default(),
                    relays_started: AtomicU64::new(0),
                })
            })
            .clone()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a few plain assignments), so one panicking test task cannot wedge the whole WAN.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One direction of a region pair.
struct Link {
    state: Mutex<LinkState>,
    counters: Counters,
    /// Numbers this link's relays so each gets its own reproducible RNG stream.
    relays_started: AtomicU64,
}

struct LinkState {
    conditions: LinkConditions,
    /// When the bandwidth-capped bottleneck finishes sending what it already accepted.
    bottleneck_free_at: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    datagrams_forwarded: AtomicU64,
    bytes_forwarded: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_partition: AtomicU64,
    dropped_congestion: AtomicU64,
    dropped_overflow: AtomicU64,
    send_errors: AtomicU64,
    tcp_connections: AtomicU64,
    tcp_bytes_forwarded: AtomicU64,
    tcp_connect_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(&self, reason: DropReason) {
        Counters::bump(match reason {
            DropReason::Partition => &self.dropped_partition,
            DropReason::Loss => &self.dropped_loss,
            DropReason::Congestion => &self.dropped_congestion,
        });
    }

    fn snapshot(&self) -> LinkStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkStats {
            datagrams_forwarded: get(&self.datagrams_forwarded),
            bytes_forwarded: get(&self.bytes_forwarded),
            dropped_loss: get(&self.dropped_loss),
            dropped_partition: get(&self.dropped_partition),
            dropped_congestion: get(&self.dropped_congestion),
            dropped_overflow: get(&self.dropped_overflow),
            send_errors: get(&self.send_errors),
            tcp_connections: get(&self.tcp_connections),
            tcp_bytes_forwarded: get(&self.tcp_bytes_forwarded),
            tcp_connect_errors: get(&self.tcp_connect_errors),
        }
    }
}

/// A datagram's random numbers, drawn before any decision so every datagram consumes the same
/// share of the RNG stream whatever the conditions: changing the loss of a run does not shift
/// the jitter of the datagrams after it.
#[derive(Debug, Clone, Copy)]
struct Draw {
    /// Uniform in 0..1; the datagram is lost when below `loss`.
    loss: f64,
    /// Uniform in 0..1; the fraction of `jitter_ms` added.
    jitter: f64,
}

impl Draw {
    fn take(rng: &mut StdRng) -> Draw {
        Draw {
            loss: rng.random(),
            jitter: rng.random(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    Partition,
    Loss,
    Congestion,
}

/// When a datagram of `len_bytes` arriving at `now` leaves the link, or why it never does. Pure
/// apart from advancing the bottleneck, so the rules are tested without sockets or clocks.
fn schedule(
    state: &mut LinkState,
    draw: Draw,
    len_bytes: usize,
    now: Instant,
) -> Result<Instant, DropReason> {
    let c = state.conditions;
    if c.partitioned {
        return Err(DropReason::Partition);
    }
    if draw.loss < c.loss {
        return Err(DropReason::Loss);
    }
    let departs = bottleneck(state, len_bytes, now).map_err(|_| DropReason::Congestion)?;
    Ok(departs + propagation(&c, draw.jitter))
}

/// When a chunk of `len_bytes` read from a TCP socket at `now` is delivered (before the FIFO
/// rule of its connection), or, when the bandwidth cap's queue is full, `Err(when to try
/// again)`: a stream waits where a datagram would be dropped. Loss and partitions do not apply
/// here (see the module documentation).
fn schedule_stream(
    state: &mut LinkState,
    jitter: f64,
    len_bytes: usize,
    now: Instant,
) -> Result<Instant, Instant> {
    let departs = bottleneck(state, len_bytes, now)?;
    Ok(departs + propagation(&state.conditions, jitter))
}

/// When `len_bytes` leave the bandwidth-capped bottleneck (now, without a cap), advancing it; or
/// `Err(when its queue is short enough again)` if it holds more than [`BOTTLENECK_QUEUE_MAX_MS`].
fn bottleneck(state: &mut LinkState, len_bytes: usize, now: Instant) -> Result<Instant, Instant> {
    let Some(rate) = state.conditions.bandwidth_bytes_per_s else {
        return Ok(now);
    };
    debug_assert!(rate > 0, "set() refuses a zero bandwidth");
    let starts = state.bottleneck_free_at.map_or(now, |t| t.max(now));
    let max_queue = Duration::from_millis(BOTTLENECK_QUEUE_MAX_MS);
    if starts - now > max_queue {
        return Err(starts - max_queue);
    }
    let tx_us = (len_bytes as u64).saturating_mul(1_000_000) / rate;
    let departs = starts + Duration::from_micros(tx_us);
    state.bottleneck_free_at = Some(departs);
    Ok(departs)
}

/// Delay plus the drawn share (`jitter` in 0..1) of the jitter.
fn propagation(c: &LinkConditions, jitter: f64) -> Duration {
    let jitter_us = (c.jitter_ms as f64 * 1_000.0 * jitter).round() as u64;
    Duration::from_millis(c.delay_ms) + Duration::from_micros(jitter_us)
}

/// One direction of one relay: datagrams wait here until their release time.
struct DelayLine {
    link: Arc<Link>,
    state: Mutex<LineState>,
    /// Tells the sender task a datagram was queued (it may be due before the one it sleeps for).
    queued: Notify,
}

struct LineState {
    rng: StdRng,
    heap: BinaryHeap<Reverse<Pending>>,
    queued_bytes: usize,
    /// The latest release time handed out, for FIFO order when `reorder` is off.
    last_release: Option<Instant>,
    /// Breaks ties between equal release times in arrival order.
    next_seq: u64,
}

struct Pending {
    release: Instant,
    seq: u64,
    data: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(other.release, other.seq))
    }
}

impl DelayLine {
    fn new(link: Arc<Link>, seed: u64) -> DelayLine {
        DelayLine {
            link,
            state: Mutex::new(LineState {
                rng: StdRng::seed_from_u64(seed),
                heap: BinaryHeap::new(),
                queued_bytes: 0,
                last_release: None,
                next_seq: 0,
            }),
            queued: Notify::new(),
        }
    }

    /// Applies the link's conditions to `data` and queues it to be sent from `socket` to `to`.
    fn push(&self, data: Vec<u8>, socket: Arc<UdpSocket>, to: SocketAddr) {
        let now = Instant::now();
        // Lock order everywhere: line, then link.
        let mut line = lock(&self.state);
        let draw = Draw::take(&mut line.rng);
        let (scheduled, reorder) = {
            let mut link = lock(&self.link.state);
            let reorder = link.conditions.reorder;
            (schedule(&mut link, draw, data.len(), now), reorder)
        };
        let release = match scheduled {
            Ok(release) => release,
            Err(reason) => {
                self.link.counters.dropped(reason);
                return;
            }
        };
        if line.queued_bytes + data.len() > DELAY_LINE_MAX_BYTES {
            Counters::bump(&self.link.counters.dropped_overflow);
            return;
        }
        let release = match (reorder, line.last_release) {
            (false, Some(last)) => release.max(last),
            _ => release,
        };
        line.last_release = Some(line.last_release.map_or(release, |l| l.max(release)));
        line.queued_bytes += data.len();
        let seq = line.next_seq;
        line.next_seq += 1;
        line.heap.push(Reverse(Pending {
            release,
            seq,
            data,
            socket,
            to,
        }));
        drop(line);
        self.queued.notify_one();
    }

    /// Sends each queued datagram when it is due, until the WAN is dropped.
    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<()>) {
        loop {
            let mut due = Vec::new();
            let next = {
                let mut line = lock(&self.state);
                let now = Instant::now();
                while line.heap.peek().is_some_and(|p| p.0.release <= now) {
                    if let Some(Reverse(p)) = line.heap.pop() {
                        line.queued_bytes -= p.data.len();
                        due.push(p);
                    }
                }
                line.heap.peek().map(|p| p.0.release)
            };
            if !due.is_empty() {
                for p in due {
                    self.send(p).await;
                }
                continue;
            }
            // With nothing queued, only a push or the shutdown can wake us; the far deadline
            // just keeps one `select!` for both cases.
            let wake_at = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.queued.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn send(&self, p: Pending) {
        let counters = &self.link.counters;
        if lock(&self.link.state).conditions.partitioned {
            counters.dropped(DropReason::Partition);
            return;
        }
        match p.socket.send_to(&p.data, p.to).await {
            Ok(_) => {
                Counters::bump(&counters.datagrams_forwarded);
                counters
                    .bytes_forwarded
                    .fetch_add(p.data.len() as u64, Ordering::Relaxed);
            }
            Err(_) => Counters::bump(&counters.send_errors),
        }
    }
}

/// One relay: a front socket clients send to, and an upstream socket per client.
struct Relay {
    front: Arc<UdpSocket>,
    target: SocketAddr,
    upstream_ip: IpAddr,
    sessions: Mutex<HashMap<SocketAddr, Session>>,
    forward: Arc<DelayLine>,
    reverse: Arc<DelayLine>,
    idle_timeout: Duration,
    sessions_open: Arc<AtomicUsize>,
    shutdown: watch::Receiver<()>,
}

/// A client's NAT mapping.
struct Session {
    upstream: Arc<UdpSocket>,
    last_active: Instant,
}

/// Counts a session task as open for exactly as long as it runs, however it ends.
struct OpenSession(Arc<AtomicUsize>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Relay {
    /// Reads clients' datagrams and queues them towards the target.
    async fn run_front(self: Arc<Self>, mut shutdown: watch::Receiver<()>) {
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        loop {
            let received = tokio::select! {
                _ = shutdown.changed() => return,
                r = self.front.recv_from(&mut buf) => r,
            };
            match received {
                Ok((len, client)) => match self.session_for(client) {
                    Some(upstream) => self
                        .forward
                        .push(buf[..len].to_vec(), upstream, self.target),
                    None => Counters::bump(&self.forward.link.counters.dropped_overflow),
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(IO_ERROR_BACKOFF_MS)).await,
            }
        }
    }

    /// The client's upstream socket, opened (with its reply task) on the client's first datagram.
    fn session_for(self: &Arc<Self>, client: SocketAddr) -> Option<Arc<UdpSocket>> {
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        if let Some(s) = sessions.get_mut(&client) {
            s.last_active = now;
            return Some(s.upstream.clone());
        }
        if sessions.len() >= MAX_SESSIONS_PER_RELAY {
            return None;
        }
        let upstream = Arc::new(bind_upstream(self.upstream_ip).ok()?);
        sessions.insert(
            client,
            Session {
                upstream: upstream.clone(),
                last_active: now,
            },
        );
        self.sessions_open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenSession(self.sessions_open.clone());
        tokio::spawn(self.clone().run_session(client, upstream.clone(), guard));
        Some(upstream)
    }

    /// Carries the target's replies back to `client` until the mapping idles out or the WAN is
    /// dropped.
    async fn run_session(
        self: Arc<Self>,
        client: SocketAddr,
        upstream: Arc<UdpSocket>,
        _open: OpenSession,
    ) {
        let mut shutdown = self.shutdown.clone();
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        loop {
            let idle_at = match lock(&self.sessions).get(&client) {
                Some(s) => s.last_active + self.idle_timeout,
                None => return,
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(idle_at) => {
                    let mut sessions = lock(&self.sessions);
                    // Traffic may have refreshed the mapping since `idle_at` was read.
                    let idle = sessions
                        .get(&client)
                        .is_none_or(|s| Instant::now() >= s.last_active + self.idle_timeout);
                    if idle {
                        sessions.remove(&client);
                        return;
                    }
                }
                r = upstream.recv_from(&mut buf) => match r {
                    // Like a NAT with address-dependent filtering: only the target may answer.
                    Ok((len, from)) if from == self.target => {
                        if let Some(s) = lock(&self.sessions).get_mut(&client) {
                            s.last_active = Instant::now();
                        }
                        self.reverse.push(buf[..len].to_vec(), self.front.clone(), client);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(IO_ERROR_BACKOFF_MS)).await,
                },
            }
        }
    }
}

/// One TCP relay: a listener clients connect to, and an upstream connection per client.
struct TcpRelay {
    target: SocketAddr,
    upstream_ip: IpAddr,
    there: Arc<Link>,
    back: Arc<Link>,
    /// Seeds the jitter of this relay's connections (each gets its own stream, by ordinal).
    seed: u64,
    connections: AtomicU64,
    open: Arc<AtomicUsize>,
    shutdown: watch::Receiver<()>,
}

/// A chunk of a stream in a delay line; empty data is the end of the stream (FIN).
struct Chunk {
    release: Instant,
    data: Vec<u8>,
}

impl TcpRelay {
    async fn run_listener(self: Arc<Self>, listener: TcpListener) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.changed() => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((client, _)) => {
                    let ordinal = self.connections.fetch_add(1, Ordering::Relaxed);
                    Counters::bump(&self.there.counters.tcp_connections);
                    self.open.fetch_add(1, Ordering::SeqCst);
                    let open = OpenSession(self.open.clone());
                    tokio::spawn(self.clone().run_connection(client, ordinal, open));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(IO_ERROR_BACKOFF_MS)).await,
            }
        }
    }

    /// Carries one connection until both directions ended, one failed, or the WAN is dropped;
    /// returning drops (closes) both sockets.
    async fn run_connection(self: Arc<Self>, client: TcpStream, ordinal: u64, _open: OpenSession) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = self.carry(client, ordinal) => {}
        }
    }

    async fn carry(&self, client: TcpStream, ordinal: u64) {
        // The relay adds its own delay; Nagle would add more, and unevenly.
        let _ = client.set_nodelay(true);
        // A partition holds the handshake too: the target hears of the connection after a heal.
        wait_healed(&self.there).await;
        let upstream = match connect_from(self.upstream_ip, self.target).await {
            Ok(s) => s,
            Err(_) => {
                Counters::bump(&self.there.counters.tcp_connect_errors);
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = upstream.into_split();
        let seed = splitmix64(self.seed ^ ordinal);
        // A failure either way ends both (try_join drops the other); a clean end of one
        // direction (FIN passed on) waits for the other.
        let _ = tokio::try_join!(
            pump(client_read, upstream_write, &self.there, seed),
            pump(upstream_read, client_write, &self.back, splitmix64(seed)),
        );
    }
}

/// Moves one direction of a connection through `link`'s conditions: chunks in read order, each
/// no earlier than its release time nor than the chunk before it, held while partitioned.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: &Link,
    seed: u64,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    // Bytes in the line; bounded so a stalled side stops the relay reading the other.
    let window = &Semaphore::new(TCP_DELAY_LINE_MAX_BYTES);
    let read = async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last_release: Option<Instant> = None;
        let mut buf = vec![0u8; TCP_READ_CHUNK_BYTES];
        loop {
            let n = from.read(&mut buf).await?;
            if n > 0 {
                let bytes = u32::try_from(n).expect("a read chunk is at most 64 KiB");
                window
                    .acquire_many(bytes)
                    .await
                    .expect("the window semaphore is never closed")
                    .forget();
            }
            let jitter: f64 = rng.random();
            let release = loop {
                let scheduled = schedule_stream(&mut lock(&link.state), jitter, n, Instant::now());
                match scheduled {
                    Ok(t) => break t,
                    Err(retry_at) => tokio::time::sleep_until(retry_at).await,
                }
            };
            let release = last_release.map_or(release, |last| release.max(last));
            last_release = Some(release);
            let data = buf[..n].to_vec();
            // The receiver lives as long as this future (try_join below).
            let _ = tx.send(Chunk { release, data });
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.release).await;
            if wait_healed(link).await {
                // Held bytes cross once the link is back: one delay after the heal.
                let delay_ms = lock(&link.state).conditions.delay_ms;
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            if chunk.data.is_empty() {
                to.shutdown().await?;
                return Ok(());
            }
            to.write_all(&chunk.data).await?;
            window.add_permits(chunk.data.len());
            link.counters
                .tcp_bytes_forwarded
                .fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Waits while `link` is partitioned; whether it was.
async fn wait_healed(link: &Link) -> bool {
    let mut waited = false;
    loop {
        let cut = lock(&link.state).conditions.partitioned;
        if !cut {
            return waited;
        }
        waited = true;
        tokio::time::sleep(Duration::from_millis(TCP_PARTITION_POLL_MS)).await;
    }
}

async fn connect_from(ip: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(target).await
}

fn bind_upstream(ip: IpAddr) -> io::Result<UdpSocket> {
    bind_udp(SocketAddr::new(ip, 0))
}

/// The IP an upstream socket leaves from: the relay's own when the families match, so the
/// target sees traffic from the region's relay address rather than from some other loopback
/// address.
fn upstream_ip(bind_ip: IpAddr, target: SocketAddr) -> IpAddr {
    match (bind_ip, target.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => bind_ip,
        (_, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Socket buffer sizes the kernel granted the UDP relay sockets (as `getsockopt` reports them:
/// Linux doubles the granted request), and the caps it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    pub requested_bytes: usize,
    pub recv_bytes: usize,
    pub send_bytes: usize,
    /// `net.core.rmem_max` / `wmem_max`, if readable.
    pub rmem_max_bytes: Option<usize>,
    pub wmem_max_bytes: Option<usize>,
}

static UDP_BUFFERS: OnceLock<SocketBuffers> = OnceLock::new();

/// What the first UDP relay socket of this process got; `None` before any relay started.
pub fn udp_socket_buffers() -> Option<SocketBuffers> {
    UDP_BUFFERS.get().copied()
}

/// A non-blocking UDP socket with [`UDP_SOCKET_BUFFER_BYTES`] asked for both buffers. The first
/// one of the process logs (stderr) what the kernel granted, once.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A refused size is not fatal: the relay still works, with the kernel's default buffers.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UDP_BUFFERS.get_or_init(|| {
        let read_max = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let got = SocketBuffers {
            requested_bytes: UDP_SOCKET_BUFFER_BYTES,
            recv_bytes: socket.recv_buffer_size().unwrap_or(0),
            send_bytes: socket.send_buffer_size().unwrap_or(0),
            rmem_max_bytes: read_max("rmem_max"),
            wmem_max_bytes: read_max("wmem_max"),
        };
        let short = got.recv_bytes < UDP_SOCKET_BUFFER_BYTES || got.send_bytes < UDP_SOCKET_BUFFER_BYTES;
        eprintln!(
            "wan: UDP relay socket buffers: asked {} bytes, got SO_RCVBUF {} SO_SNDBUF {} (net.core.rmem_max {:?}, wmem_max {:?}){}",
            got.requested_bytes,
            got.recv_bytes,
            got.send_bytes,
            got.rmem_max_bytes,
            got.wmem_max_bytes,
            if short {
                "; capped: raise net.core.rmem_max/wmem_max (sysctl -w) for fewer RcvbufErrors under bursts"
            } else {
                ""
            }
        );
        got
    });
    UdpSocket::from_std(socket.into())
}

/// A relay direction's RNG seed from the WAN's seed and what identifies the relay across runs
/// (not its ports, which the kernel picks anew). FNV-1a over the names, then splitmix64.
fn relay_seed(seed: u64, from: &str, to: &str, ordinal: u64, direction: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(from.as_bytes());
    eat(&[0xff]);
    eat(to.as_bytes());
    eat(&[0xff]);
    eat(&ordinal.to_le_bytes());
    eat(&direction.to_le_bytes());
    splitmix64(seed ^ h)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(conditions: LinkConditions) -> LinkState {
        LinkState {
            conditions,
            bottleneck_free_at: None,
        }
    }

    const NO_DRAW: Draw = Draw {
        loss: 0.5,
        jitter: 0.0,
    };

    #[test]
    fn delay_and_jitter_only_add() {
        let now = Instant::now();
        let mut s = state(LinkConditions {
            delay_ms: 30,
            jitter_ms: 10,
            ..LinkConditions::default()
        });
        let at = |jitter| {
            schedule(
                &mut state(s.conditions),
                Draw { loss: 0.5, jitter },
                100,
                now,
            )
        };
        assert_eq!(at(0.0), Ok(now + Duration::from_millis(30)));
        assert_eq!(at(0.5), Ok(now + Duration::from_millis(35)));
        assert_eq!(at(1.0), Ok(now + Duration::from_millis(40)));
        assert_eq!(
            schedule(&mut s, NO_DRAW, 100, now),
            Ok(now + Duration::from_millis(30))
        );
    }

    #[test]
    fn loss_and_partition_drop() {
        let now = Instant::now();
        let lossy = LinkConditions {
            loss: 0.25,
            ..LinkConditions::default()
        };
        let with = |loss| schedule(&mut state(lossy), Draw { loss, jitter: 0.0 }, 1, now);
        assert_eq!(with(0.0), Err(DropReason::Loss));
        assert_eq!(with(0.2499), Err(DropReason::Loss));
        assert_eq!(with(0.25), Ok(now));
        let all = LinkConditions {
            loss: 1.0,
            ..LinkConditions::default()
        };
        assert_eq!(
            schedule(
                &mut state(all),
                Draw {
                    loss: 0.999_999,
                    jitter: 0.0
                },
                1,
                now
            ),
            Err(DropReason::Loss)
        );
        let cut = LinkConditions {
            partitioned: true,
            ..LinkConditions::default()
        };
        assert_eq!(
            schedule(&mut state(cut), NO_DRAW, 1, now),
            Err(DropReason::Partition)
        );
    }

    #[test]
    fn bandwidth_serializes_and_tail_drops() {
        let now = Instant::now();
        // 1000 bytes at 100 kB/s: 10 ms each on the wire.
        let mut s = state(LinkConditions {
            delay_ms: 5,
            bandwidth_bytes_per_s: Some(100_000),
            ..LinkConditions::default()
        });
        let mut releases = Vec::new();
        loop {
            match schedule(&mut s, NO_DRAW, 1_000, now) {
                Ok(t) => releases.push(t),
                Err(reason) => {
                    assert_eq!(reason, DropReason::Congestion);
                    break;
                }
            }
        }
        for (i, t) in releases.iter().enumerate() {
            assert_eq!(*t, now + Duration::from_millis(5 + 10 * (i as u64 + 1)));
        }
        // Accepted while the queue ahead was at most BOTTLENECK_QUEUE_MAX_MS long.
        assert_eq!(releases.len() as u64, BOTTLENECK_QUEUE_MAX_MS / 10 + 1);
        // Once the queue drains, datagrams pass again without waiting behind the old ones.
        let later = now + Duration::from_secs(10);
        assert_eq!(
            schedule(&mut s, NO_DRAW, 1_000, later),
            Ok(later + Duration::from_millis(15))
        );
    }

    #[test]
    fn same_seed_same_draws_and_relays_differ() {
        let draws = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..100)
                .map(|_| Draw::take(&mut rng).loss)
                .collect::<Vec<_>>()
        };
        let a = relay_seed(7, "sh", "hk", 0, 0);
        assert_eq!(draws(a), draws(relay_seed(7, "sh", "hk", 0, 0)));
        for other in [
            relay_seed(8, "sh", "hk", 0, 0),
            relay_seed(7, "hk", "sh", 0, 0),
            relay_seed(7, "sh", "hk", 1, 0),
            relay_seed(7, "sh", "hk", 0, 1),
            relay_seed(7, "shh", "k", 0, 0),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    #[should_panic(expected = "use a value in 0.0..=1.0")]
    fn loss_above_one_is_refused() {
        LinkConditions {
            loss: 1.5,
            ..LinkConditions::default()
        }
        .assert_valid();
    }

    #[tokio::test]
    async fn udp_relay_sockets_get_large_buffers() {
        let socket = bind_udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).unwrap();
        let got = udp_socket_buffers().expect("recorded by the first UDP relay socket");
        let cap = |max: Option<usize>| {
            max.map_or(UDP_SOCKET_BUFFER_BYTES, |m| m.min(UDP_SOCKET_BUFFER_BYTES))
        };
        // The kernel grants the request up to its cap (and reports twice that).
        assert!(got.recv_bytes >= cap(got.rmem_max_bytes), "{got:?}");
        assert!(got.send_bytes >= cap(got.wmem_max_bytes), "{got:?}");
        let this = Socket::from(socket.into_std().unwrap());
        assert!(this.recv_buffer_size().unwrap() >= cap(got.rmem_max_bytes));
    }

    /// TCP relay tests: real sockets on 127.0.0.1. Timing assertions are lower bounds only (a
    /// relay must never be faster than the link it emulates); waits for something to happen
    /// have generous deadlines.
    mod tcp {
        use super::super::*;
        use crate::wait_until;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
        /// Only a hang should hit this.
        const DEADLINE_MS: u64 = 30_000;
        /// How long a partitioned link is watched for bytes that must not cross.
        const QUIET_MS: u64 = 300;

        async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
            tokio::time::timeout(Duration::from_millis(DEADLINE_MS), fut)
                .await
                .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE_MS} ms"))
        }

        /// Echoes every connection's bytes back, then closes its side after the client's FIN.
        /// With `greeting`, first sends it unasked.
        async fn echo_server(greeting: Option<&'static [u8]>) -> SocketAddr {
            let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        if let Some(g) = greeting {
                            s.write_all(g).await.unwrap();
                        }
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            });
            addr
        }

        async fn echo(s: &mut TcpStream, msg: &[u8]) -> Duration {
            let start = Instant::now();
            s.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            within("echo", s.read_exact(&mut back)).await.unwrap();
            assert_eq!(back, msg);
            start.elapsed()
        }

        /// Nothing arrives on `s` for QUIET_MS.
        async fn assert_quiet(s: &mut TcpStream, what: &str) {
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(QUIET_MS), s.read(&mut buf)).await {
                Err(_) => {}
                Ok(r) => panic!("{what}: expected nothing while partitioned, read {r:?}"),
            }
        }

        #[tokio::test]
        async fn delay_is_a_lower_bound_in_each_direction() {
            let server = echo_server(Some(b"hello")).await;
            let wan = Wan::new(1);
            wan.set("sh", "hk", LinkConditions::delay(40));
            wan.set("hk", "sh", LinkConditions::delay(20));
            let relay = wan.relay_tcp("sh", "hk", server, LOCALHOST).await.unwrap();
            let start = Instant::now();
            let mut s = TcpStream::connect(relay).await.unwrap();
            let mut hello = [0u8; 5];
            within("greeting", s.read_exact(&mut hello)).await.unwrap();
            assert_eq!(&hello, b"hello");
            let greeting = start.elapsed();
            assert!(
                greeting >= Duration::from_millis(20),
                "greeting after {greeting:?}"
            );
            for i in 0..5u8 {
                let rtt = echo(&mut s, &[b'x', i]).await;
                assert!(
                    rtt >= Duration::from_millis(60),
                    "round trip {i} took {rtt:?}"
                );
            }
            let there = wan.stats("sh", "hk");
            assert_eq!((there.tcp_connections, there.tcp_bytes_forwarded), (1, 10));
            assert_eq!(wan.stats("hk", "sh").tcp_bytes_forwarded, 15);
            // The UDP counters are untouched by TCP.
            assert_eq!(there.datagrams_forwarded, 0);
        }

        #[tokio::test]
        async fn jitter_never_reorders_a_stream() {
            let server = echo_server(None).await;
            let wan = Wan::new(7);
            wan.set_both(
                "sh",
                "hk",
                LinkConditions {
                    delay_ms: 2,
                    jitter_ms: 20,
                    ..LinkConditions::default()
                },
            );
            let relay = wan.relay_tcp("sh", "hk", server, LOCALHOST).await.unwrap();
            let s = TcpStream::connect(relay).await.unwrap();
            s.set_nodelay(true).unwrap();
            let (mut r, mut w) = s.into_split();
            // Many small writes with pauses: many chunks, each with its own jitter draw.
            let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let to_send = sent.clone();
            let writer = tokio::spawn(async move {
                for (i, piece) in to_send.chunks(1_000).enumerate() {
                    w.write_all(piece).await.unwrap();
                    if i % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            within("the echo of 300 kB", r.read_to_end(&mut got))
                .await
                .unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), sent.len());
            assert!(got == sent, "the stream came back reordered or damaged");
            let stats = wan.stats("sh", "hk");
            assert_eq!(stats.tcp_bytes_forwarded, sent.len() as u64);
            // The server closed after our FIN, so the relay lets the connection go.
            wait_until("the relay's connection to close", DEADLINE_MS, || {
                let open = wan.tcp_connections();
                async move { open == 0 }
            })
            .await
            .unwrap();
        }

        #[tokio::test]
        async fn partition_holds_bytes_and_connections_until_heal() {
            let server = echo_server(None).await;
            let wan = Wan::new(3);
            wan.set_both("sh", "hk", LinkConditions::delay(5));
            let relay = wan.relay_tcp("sh", "hk", server, LOCALHOST).await.unwrap();
            let mut old = TcpStream::connect(relay).await.unwrap();
            echo(&mut old, b"before").await;

            wan.partition("sh", "hk");
            old.write_all(b"during-1").await.unwrap();
            let mut new = TcpStream::connect(relay).await.unwrap();
            new.write_all(b"new").await.unwrap();
            assert_quiet(&mut old, "established connection").await;
            assert_quiet(&mut new, "connection opened during the partition").await;
            old.write_all(b"during-2").await.unwrap();
            assert_eq!(wan.stats("sh", "hk").tcp_bytes_forwarded, 6);

            wan.heal("sh", "hk");
            let mut back = [0u8; 16];
            within("held bytes after the heal", old.read_exact(&mut back))
                .await
                .unwrap();
            assert_eq!(&back, b"during-1during-2");
            let mut back = [0u8; 3];
            within(
                "the held connection after the heal",
                new.read_exact(&mut back),
            )
            .await
            .unwrap();
            assert_eq!(&back, b"new");
            echo(&mut old, b"after").await;
            assert_eq!(wan.stats("sh", "hk").tcp_connections, 2);

            // A partition of the whole region holds too.
            wan.partition_region("hk");
            old.write_all(b"cut").await.unwrap();
            assert_quiet(&mut old, "region partition").await;
            wan.heal_region("hk");
            let mut back = [0u8; 3];
            within("bytes after the region heal", old.read_exact(&mut back))
                .await
                .unwrap();
            assert_eq!(&back, b"cut");
        }

        #[tokio::test]
        async fn bandwidth_cap_paces_a_stream_without_loss() {
            let server = echo_server(None).await;
            let wan = Wan::new(5);
            wan.set(
                "sh",
                "hk",
                LinkConditions {
                    bandwidth_bytes_per_s: Some(200_000),
                    ..LinkConditions::default()
                },
            );
            let relay = wan.relay_tcp("sh", "hk", server, LOCALHOST).await.unwrap();
            let s = TcpStream::connect(relay).await.unwrap();
            let (mut r, mut w) = s.into_split();
            let sent = vec![7u8; 200_000];
            let start = Instant::now();
            let to_send = sent.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&to_send).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            within("200 kB at 200 kB/s", r.read_to_end(&mut got))
                .await
                .unwrap();
            writer.await.unwrap();
            let took = start.elapsed();
            assert!(got == sent, "bytes lost or damaged under the cap");
            // 1 s at the cap, minus slack for the chunk sizes the kernel hands over.
            assert!(took >= Duration::from_millis(800), "took {took:?}");
            assert_eq!(wan.stats("sh", "hk").dropped_congestion, 0);
        }

        #[tokio::test]
        async fn end_of_stream_and_wan_drop_close_connections() {
            let server = echo_server(None).await;
            let wan = Wan::new(9);
            wan.set_both("sh", "hk", LinkConditions::delay(10));
            let relay = wan.relay_tcp("sh", "hk", server, LOCALHOST).await.unwrap();
            let mut s = TcpStream::connect(relay).await.unwrap();
            echo(&mut s, b"ping").await;
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            within("the server's FIN", s.read_to_end(&mut rest))
                .await
                .unwrap();
            assert!(rest.is_empty());

            let mut open = TcpStream::connect(relay).await.unwrap();
            echo(&mut open, b"ping").await;
            drop(wan);
            let mut buf = [0u8; 8];
            let closed = within("the close after the WAN is dropped", open.read(&mut buf)).await;
            assert!(matches!(closed, Ok(0) | Err(_)), "read {closed:?}");
            wait_until(
                "the relay's listener to close",
                DEADLINE_MS,
                || async move { TcpStream::connect(relay).await.is_err() },
            )
            .await
            .unwrap();
        }

        #[tokio::test]
        async fn refused_upstream_closes_the_client() {
            // A port nobody listens on: bind one, note it, close it.
            let target = {
                let l = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
                l.local_addr().unwrap()
            };
            let wan = Wan::new(11);
            let relay = wan.relay_tcp("sh", "hk", target, LOCALHOST).await.unwrap();
            let mut s = TcpStream::connect(relay).await.unwrap();
            let mut buf = [0u8; 8];
            let r = within("the close of a refused connection", s.read(&mut buf)).await;
            assert!(matches!(r, Ok(0) | Err(_)), "read {r:?}");
            assert_eq!(wan.stats("sh", "hk").tcp_connect_errors, 1);
        }
    }
}
