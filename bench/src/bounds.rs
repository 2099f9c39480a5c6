//! One paragraph per scenario on what bounds it, for BENCHMARKS.md. The
//! figures come from the run; the explanations describe the baselines and
//! what agent-tunnel adds in general terms, so that they stay true while the
//! library's internals change. Keep them true.

use crate::report::{fmt_duration, thousands, Imp, PerCall, Report, Scenario};

fn cost(r: &Report, s: Scenario, i: Imp) -> String {
    match r.per_call(s, i) {
        Some(PerCall {
            cpu,
            allocs,
            switches,
        }) => format!(
            "{:.1} µs of CPU, {allocs:.0} allocations and {switches:.2} context switches per call",
            cpu.as_secs_f64() * 1e6
        ),
        None => "not measured".into(),
    }
}

fn ratio(r: &Report, s: Scenario, i: Imp, base: Imp) -> String {
    r.ratio_of(s, i, base)
        .map_or_else(|| "—".into(), |x| format!("{x:.2}×"))
}

fn kib(r: &Report, s: Scenario, i: Imp) -> String {
    r.figure(s, i)
        .map_or_else(|| "—".into(), |b| format!("{:.1} KiB", b / 1024.0))
}

fn time(r: &Report, s: Scenario, i: Imp) -> String {
    r.figure(s, i).map_or_else(
        || "—".into(),
        |t| fmt_duration(std::time::Duration::from_secs_f64(t)),
    )
}

fn rate(r: &Report, s: Scenario, i: Imp) -> String {
    r.figure(s, i)
        .map_or_else(|| "—".into(), |x| thousands(x as usize))
}

pub fn paragraphs(r: &Report) -> String {
    let p = &r.plan;
    let (seq, flight) = (Scenario::SeqA2S, Scenario::FlightA2S);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = String::new();

    out.push_str(&format!(
        "**Sequential round trips.** One call is one request frame and one response frame \
         over loopback, so the bound is latency: the work on the path of one call, and how \
         often a sleeping worker thread must be woken (a futex wake and a context switch, \
         several microseconds each on this virtual machine). The raw echo is two tasks, the \
         caller and the echo, that hand the connection back and forth on one worker thread: \
         {raw}. jsonrpsee: {rpc}. agent-tunnel: {tun}. What the tunnel adds on the path of a \
         call: its envelope (`req` with id, action and timeout; `res` with id and outcome) \
         encoded and decoded around the body on both ends, a pending-map entry and a oneshot \
         per call, the caller's timeout timer, the hook dispatch into a typed handler, and \
         hand-offs between the caller's task and the task that owns the socket (and, for a \
         hook that does not finish at once, the hook's own task). The context switches per \
         call show how often those hand-offs wake the second worker. Server → agent calls \
         take the same path the other way, plus a registry lookup by name.\n\n",
        raw = cost(r, seq, Imp::Raw),
        rpc = cost(r, seq, Imp::Rpc),
        tun = cost(r, seq, Imp::Tunnel),
    ));

    out.push_str(&format!(
        "**{d} calls in flight.** With calls pipelined, the bound is CPU per call and how \
         well writes are batched. The raw client writes requests back to back and flushes \
         once before it waits, the echo flushes once per batch of replies it has already \
         read, and both stay on one worker: {raw}, close to the cost of the JSON and the \
         framing alone. It needs no state per call: replies come back in order on its one \
         connection and are matched by position. agent-tunnel serves any number of callers \
         and hooks on one link, so each call also carries an id and an envelope, checks its \
         body is one JSON value on arrival (both ends), and has a pending entry, a oneshot, a \
         timer and a hand-off between the caller's task and the task that owns the socket: \
         {tun}. jsonrpsee: {rpc}. Where the rate times the CPU \
         per call stays well under the {cores} cores, the stages of the pipeline wait for \
         each other (hand-offs across workers, flushes of small batches) rather than for the \
         CPU.\n\n",
        d = p.depth,
        raw = cost(r, flight, Imp::Raw),
        tun = cost(r, flight, Imp::Tunnel),
        rpc = cost(r, flight, Imp::Rpc),
    ));

    out.push_str(&format!(
        "**Signed frames.** Signing adds HMAC-SHA256 over every frame, four per call (sign \
         and verify the request, sign and verify the response), and wraps each frame in an \
         envelope (sequence number and hex MAC) that the receiver parses before the frame \
         inside it: sequential {s} of unsigned, {d} in flight {f}; signed: {cost}. The \
         hashing itself is a few SHA-256 blocks per frame; the envelope's extra parse, \
         copies and allocations count as much.\n\n",
        s = ratio(r, seq, Imp::TunnelSigned, Imp::Tunnel),
        d = p.depth,
        f = ratio(r, flight, Imp::TunnelSigned, Imp::Tunnel),
        cost = cost(r, seq, Imp::TunnelSigned),
    ));

    let (small, big) = (Scenario::FanOut(p.fan_small), Scenario::FanOut(p.fan_big));
    out.push_str(&format!(
        "**`send_all` fan-out.** One round writes one frame to every agent and waits for \
         every reply, so the server makes at least one write and one read system call and \
         two task wake-ups per agent, and the agents' process, on the same {cores} cores, \
         does the same plus the echo. Measured: {ns} agents {ts} against {rs} raw ({rsm}); \
         {nb} agents {tb} against {rb} raw ({rbm}). On top of the raw fan-out, `send_all` \
         takes a snapshot of the registry, encodes the request for each agent, registers a \
         pending entry, a oneshot and a timer per agent, and collects every reply into a map \
         keyed by agent name; on the agents' side each request goes through the full client \
         link and its hook dispatch, where the raw clients run one echo task. Both fleets of \
         a size are connected at once and their rounds alternate, so a slow spell of the \
         machine falls on both.\n\n",
        ns = thousands(p.fan_small),
        ts = time(r, small, Imp::Tunnel),
        rs = time(r, small, Imp::Raw),
        rsm = ratio(r, small, Imp::Tunnel, Imp::Raw),
        nb = thousands(p.fan_big),
        tb = time(r, big, Imp::Tunnel),
        rb = time(r, big, Imp::Raw),
        rbm = ratio(r, big, Imp::Tunnel, Imp::Raw),
    ));

    let (idle, after) = (Scenario::MemIdle(p.fan_big), Scenario::MemAfter(p.fan_big));
    out.push_str(&format!(
        "**Server memory per agent.** Idle: agent-tunnel {ti}, raw {ri}, jsonrpsee {pi}; after \
         one round of traffic: {ta}, {ra}, {pa}. The raw server's share is mostly \
         tungstenite's read buffer (its capacity, 4 KiB here, is allocated at the upgrade), \
         the connection's task and its channel. agent-tunnel adds the link's task or tasks (a \
         task's future is allocated with it, so the size of its state machine counts), the \
         link's queue, watch channels, pending map and limits, the `Agent` handle with its \
         metadata, the registry entry and a heartbeat timer. Traffic grows tungstenite's \
         write buffer to the largest frame written and gives the maps their tables. The read \
         and write buffers are `LinkConfig::read_buffer` and `write_buffer`. Kernel socket \
         buffers are not in the process's RSS. On the agents' side \
         (not a target) the notes show what one connection costs the client process: an \
         `AgentClient` with its supervisor, link, event channel and hooks, against one echo \
         task for raw tungstenite and a jsonrpsee `WsClient`.\n\n",
        ti = kib(r, idle, Imp::Tunnel),
        ri = kib(r, idle, Imp::Raw),
        pi = kib(r, idle, Imp::Rpc),
        ta = kib(r, after, Imp::Tunnel),
        ra = kib(r, after, Imp::Raw),
        pa = kib(r, after, Imp::Rpc),
    ));

    let hs = Scenario::Handshakes;
    out.push_str(&format!(
        "**Handshakes.** Clients connect {c} at a time to a server in the same process, so \
         both ends' work shares the {cores} cores. The baselines do TCP and the WebSocket \
         upgrade only ({rr} handshakes/s raw, {pr} jsonrpsee). agent-tunnel adds a round and \
         a half after the upgrade (hello → auth → welcome), random nonces, the HMAC proofs \
         both ways, the session key and the name token, a new name from the name book (every \
         agent here is new, and grants are serialized so that each name is saved to the \
         store before its welcome) and the registry entry, then starts the link: {tr} \
         handshakes/s ({rt} of raw, {pt} of jsonrpsee).\n",
        c = p.hs_concurrency,
        rr = rate(r, hs, Imp::Raw),
        pr = rate(r, hs, Imp::Rpc),
        tr = rate(r, hs, Imp::Tunnel),
        rt = ratio(r, hs, Imp::Tunnel, Imp::Raw),
        pt = ratio(r, hs, Imp::Tunnel, Imp::Rpc),
    ));
    out
}
