//! Client commands: what each RESP request is (a write to replicate, a linearizable read,
//! or something answered on the spot), its arity and argument checks with Redis's
//! wording, and the replies.

use bytes::Bytes;

use crate::kv::{Command, Kv, Outcome, SetCond};

/// A reply to a client, independent of the codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(&'static str),
    Error(String),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    pub fn err(s: impl Into<String>) -> Reply {
        Reply::Error(s.into())
    }
}

/// A linearizable read, served once the read index is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    Get(Bytes),
    MGet(Vec<Bytes>),
    Exists(Vec<Bytes>),
    DbSize,
}

/// What to do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Replicate, then answer with the outcome of applying it.
    Write(Command),
    /// Confirm leadership (ReadIndex), then answer from the applied state.
    Read(Read),
    /// Answer with node state (INFO).
    Info(Option<String>),
    /// Answer at once.
    Now(Reply),
    /// Answer `+OK`, then close the connection.
    Quit,
}

fn arity(name: &str) -> Reply {
    Reply::err(format!("ERR wrong number of arguments for '{name}' command"))
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn quote(b: &[u8]) -> String {
    // Keep error lines single-line and printable (RESP errors cannot hold CR or LF).
    String::from_utf8_lossy(b).chars().map(|c| if c.is_control() { '?' } else { c }).take(64).collect()
}

/// Classifies a request (`args[0]` is the command name).
pub fn parse(args: &[Bytes]) -> Action {
    let Some(name) = args.first() else { return Action::Now(Reply::err("ERR empty command")) };
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    let rest = &args[1..];
    match lower.as_str() {
        "ping" => match rest {
            [] => Action::Now(Reply::Simple("PONG")),
            [msg] => Action::Now(Reply::Bulk(msg.clone())),
            _ => Action::Now(arity("ping")),
        },
        "echo" => match rest {
            [msg] => Action::Now(Reply::Bulk(msg.clone())),
            _ => Action::Now(arity("echo")),
        },
        "get" => match rest {
            [key] => Action::Read(Read::Get(key.clone())),
            _ => Action::Now(arity("get")),
        },
        "mget" if !rest.is_empty() => Action::Read(Read::MGet(rest.to_vec())),
        "exists" if !rest.is_empty() => Action::Read(Read::Exists(rest.to_vec())),
        "dbsize" if rest.is_empty() => Action::Read(Read::DbSize),
        "set" => parse_set(rest),
        "del" if !rest.is_empty() => Action::Write(Command::Del { keys: rest.to_vec() }),
        "incr" | "decr" => match rest {
            [key] => Action::Write(Command::IncrBy { key: key.clone(), delta: if lower == "incr" { 1 } else { -1 } }),
            _ => Action::Now(arity(&lower)),
        },
        "incrby" | "decrby" => match rest {
            [key, n] => match parse_i64(n) {
                Some(n) if lower == "incrby" => Action::Write(Command::IncrBy { key: key.clone(), delta: n }),
                Some(n) => match n.checked_neg() {
                    Some(delta) => Action::Write(Command::IncrBy { key: key.clone(), delta }),
                    None => Action::Now(Reply::err(crate::kv::ERR_OVERFLOW)),
                },
                None => Action::Now(Reply::err(crate::kv::ERR_NOT_INTEGER)),
            },
            _ => Action::Now(arity(&lower)),
        },
        "mset" if !rest.is_empty() && rest.len().is_multiple_of(2) => {
            Action::Write(Command::MSet { pairs: rest.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect() })
        }
        "info" => match rest {
            [] => Action::Info(None),
            [section] => Action::Info(Some(String::from_utf8_lossy(section).to_ascii_lowercase())),
            _ => Action::Now(Reply::err("ERR syntax error")),
        },
        // redis-cli asks for COMMAND DOCS at start and tolerates an empty answer.
        "command" => match rest.first().map(|s| s.to_ascii_lowercase()) {
            Some(sub) if sub == b"count" => Action::Now(Reply::Int(SUPPORTED.len() as i64)),
            _ => Action::Now(Reply::Array(Vec::new())),
        },
        "config" => parse_config(rest),
        "select" => match rest {
            [db] if db.as_ref() == b"0" => Action::Now(Reply::Simple("OK")),
            [_] => Action::Now(Reply::err("ERR DB index is out of range (Skiff has database 0 only)")),
            _ => Action::Now(arity("select")),
        },
        // Client libraries name their connections; Skiff has nothing to record.
        "client" => match rest.first().map(|s| s.to_ascii_lowercase()) {
            Some(sub) if sub == b"setname" || sub == b"setinfo" => Action::Now(Reply::Simple("OK")),
            Some(sub) if sub == b"getname" => Action::Now(Reply::Nil),
            _ => Action::Now(Reply::err("ERR CLIENT subcommand not supported by Skiff")),
        },
        "hello" => parse_hello(rest),
        "quit" => Action::Quit,
        "del" | "mget" | "exists" | "dbsize" | "mset" => Action::Now(arity(&lower)),
        _ => {
            let args: Vec<String> = rest.iter().take(4).map(|a| format!("'{}'", quote(a))).collect();
            Action::Now(Reply::err(format!(
                "ERR unknown command '{}', with args beginning with: {}",
                quote(name),
                args.join(" ")
            )))
        }
    }
}

/// Commands this node answers (for COMMAND COUNT and documentation).
pub const SUPPORTED: [&str; 20] = [
    "ping", "echo", "get", "mget", "exists", "dbsize", "set", "del", "incr", "decr", "incrby", "decrby", "mset",
    "info", "command", "config", "select", "quit", "client", "hello",
];

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`. Skiff speaks RESP2
/// only: `HELLO` and `HELLO 2` answer the server's description as Redis does (a map,
/// which RESP2 sends as a flat array of names and values); any other version is
/// `-NOPROTO`, which tells RESP3-first clients to carry on with RESP2.
fn parse_hello(rest: &[Bytes]) -> Action {
    let Some((ver, opts)) = rest.split_first() else { return Action::Now(hello_reply()) };
    match parse_i64(ver) {
        Some(2) => {}
        Some(_) => return Action::Now(Reply::err("NOPROTO unsupported protocol version")),
        None => return Action::Now(Reply::err("ERR Protocol version is not an integer or out of range")),
    }
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_ascii_uppercase();
        match opt.as_slice() {
            b"AUTH" if i + 2 < opts.len() => {
                return Action::Now(Reply::err("ERR AUTH is not supported by Skiff (it has no users or passwords)"));
            }
            // The name is not recorded, as with CLIENT SETNAME.
            b"SETNAME" if i + 1 < opts.len() => i += 2,
            _ => return Action::Now(Reply::err(format!("ERR Syntax error in HELLO option '{}'", quote(&opts[i])))),
        }
    }
    Action::Now(hello_reply())
}

/// What `HELLO` answers: Redis's fields, describing Skiff. There are no client ids
/// (`id` is 0); `role` is `master` on every node because every node accepts writes
/// (followers relay them to the leader); `mode` is `standalone` because there are no
/// cluster redirects.
fn hello_reply() -> Reply {
    let s = |v: &'static str| Reply::Bulk(Bytes::from_static(v.as_bytes()));
    Reply::Array(vec![
        s("server"),
        s("skiff"),
        s("version"),
        s(env!("CARGO_PKG_VERSION")),
        s("proto"),
        Reply::Int(2),
        s("id"),
        Reply::Int(0),
        s("mode"),
        s("standalone"),
        s("role"),
        s("master"),
        s("modules"),
        Reply::Array(Vec::new()),
    ])
}

fn parse_set(rest: &[Bytes]) -> Action {
    let [key, value, opts @ ..] = rest else { return Action::Now(arity("set")) };
    let mut cond = SetCond::Always;
    for o in opts {
        let o = o.to_ascii_uppercase();
        match o.as_slice() {
            b"NX" if cond == SetCond::Always => cond = SetCond::IfAbsent,
            b"XX" if cond == SetCond::Always => cond = SetCond::IfPresent,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" | b"KEEPTTL" | b"GET" => {
                return Action::Now(Reply::err(format!(
                    "ERR SET option {} is not supported by Skiff (keys do not expire)",
                    String::from_utf8_lossy(&o)
                )));
            }
            _ => return Action::Now(Reply::err("ERR syntax error")),
        }
    }
    Action::Write(Command::Set { key: key.clone(), value: value.clone(), cond })
}

/// CONFIG GET answers what redis-benchmark and redis-cli ask for; Skiff is configured
/// through its own file and flags, so CONFIG SET is refused.
fn parse_config(rest: &[Bytes]) -> Action {
    match rest {
        [sub, pattern] if sub.eq_ignore_ascii_case(b"get") => {
            let p = String::from_utf8_lossy(pattern).to_ascii_lowercase();
            let known: &[(&str, &str)] = &[("save", ""), ("appendonly", "no"), ("databases", "1")];
            let mut out = Vec::new();
            for (k, v) in known {
                if p == "*" || p == *k {
                    out.push(Reply::Bulk(Bytes::from_static(k.as_bytes())));
                    out.push(Reply::Bulk(Bytes::from_static(v.as_bytes())));
                }
            }
            Action::Now(Reply::Array(out))
        }
        [sub, ..] if sub.eq_ignore_ascii_case(b"get") => Action::Now(arity("config|get")),
        [sub, ..] => Action::Now(Reply::err(format!(
            "ERR CONFIG {} is not supported: Skiff is configured with its config file and flags",
            quote(sub).to_ascii_uppercase()
        ))),
        [] => Action::Now(arity("config")),
    }
}

/// The reply for an applied write.
pub fn outcome_reply(o: &Outcome) -> Reply {
    match o {
        Outcome::Ok => Reply::Simple("OK"),
        Outcome::Nil => Reply::Nil,
        Outcome::Int(n) => Reply::Int(*n),
        Outcome::Err(e) => Reply::err(*e),
    }
}

/// Largest reply one request may produce. A reply is encoded whole before it is
/// written, so without a cap one MGET naming a 4 MiB value 65,535 times (within every
/// request limit) would ask for 256 GiB and abort the node.
pub const REPLY_BYTES_MAX: usize = 64 << 20;

/// Serves a read from the applied state.
pub fn serve_read(kv: &Kv, r: &Read) -> Reply {
    match r {
        Read::Get(k) => kv.get(k).map_or(Reply::Nil, |v| Reply::Bulk(v.clone())),
        Read::MGet(keys) => {
            let mut bytes = 0usize;
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let v = kv.get(k);
                bytes += v.map_or(5, |v| v.len() + 16);
                if bytes > REPLY_BYTES_MAX {
                    return Reply::err(format!(
                        "ERR the reply would exceed {} MiB: ask for fewer keys per MGET",
                        REPLY_BYTES_MAX >> 20
                    ));
                }
                out.push(v.map_or(Reply::Nil, |v| Reply::Bulk(v.clone())));
            }
            Reply::Array(out)
        }
        Read::Exists(keys) => Reply::Int(keys.iter().filter(|k| kv.get(k).is_some()).count() as i64),
        Read::DbSize => Reply::Int(kv.len() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn writes_reads_and_local_answers() {
        assert_eq!(
            parse(&req("SET k v")),
            Action::Write(Command::Set { key: b("k"), value: b("v"), cond: SetCond::Always })
        );
        assert_eq!(
            parse(&req("set k v nx")),
            Action::Write(Command::Set { key: b("k"), value: b("v"), cond: SetCond::IfAbsent })
        );
        assert_eq!(
            parse(&req("set k v XX")),
            Action::Write(Command::Set { key: b("k"), value: b("v"), cond: SetCond::IfPresent })
        );
        assert_eq!(parse(&req("GET k")), Action::Read(Read::Get(b("k"))));
        assert_eq!(parse(&req("MGET a b")), Action::Read(Read::MGet(vec![b("a"), b("b")])));
        assert_eq!(parse(&req("EXISTS a")), Action::Read(Read::Exists(vec![b("a")])));
        assert_eq!(parse(&req("DBSIZE")), Action::Read(Read::DbSize));
        assert_eq!(parse(&req("INCR n")), Action::Write(Command::IncrBy { key: b("n"), delta: 1 }));
        assert_eq!(parse(&req("DECRBY n 5")), Action::Write(Command::IncrBy { key: b("n"), delta: -5 }));
        assert_eq!(
            parse(&req("MSET a 1 b 2")),
            Action::Write(Command::MSet { pairs: vec![(b("a"), b("1")), (b("b"), b("2"))] })
        );
        assert_eq!(parse(&req("DEL a b")), Action::Write(Command::Del { keys: vec![b("a"), b("b")] }));
        assert_eq!(parse(&req("PING")), Action::Now(Reply::Simple("PONG")));
        assert_eq!(parse(&req("ECHO hi")), Action::Now(Reply::Bulk(b("hi"))));
        assert_eq!(parse(&req("QUIT")), Action::Quit);
        assert_eq!(parse(&req("INFO replication")), Action::Info(Some("replication".into())));
    }

    #[test]
    fn arity_and_argument_errors_use_redis_wording() {
        for (r, want) in [
            ("GET", "ERR wrong number of arguments for 'get' command"),
            ("GET a b", "ERR wrong number of arguments for 'get' command"),
            ("SET k", "ERR wrong number of arguments for 'set' command"),
            ("MSET a", "ERR wrong number of arguments for 'mset' command"),
            ("DEL", "ERR wrong number of arguments for 'del' command"),
            ("INCRBY n x", crate::kv::ERR_NOT_INTEGER),
            ("DECRBY n -9223372036854775808", crate::kv::ERR_OVERFLOW),
            ("SET k v NX XX", "ERR syntax error"),
            ("SET k v BOGUS", "ERR syntax error"),
            ("FLUSHALL", "ERR unknown command 'FLUSHALL', with args beginning with: "),
            ("HGET h f", "ERR unknown command 'HGET', with args beginning with: 'h' 'f'"),
        ] {
            assert_eq!(parse(&req(r)), Action::Now(Reply::err(want)), "{r}");
        }
        let Action::Now(Reply::Error(e)) = parse(&req("SET k v EX 10")) else { panic!("EX refused") };
        assert!(e.contains("EX") && e.contains("not supported"), "{e}");
        let Action::Now(Reply::Error(e)) = parse(&[b("x\r\ny")]) else { panic!() };
        assert!(!e.contains('\r') && !e.contains('\n'), "error replies stay on one line: {e:?}");
    }

    #[test]
    fn config_get_answers_what_benchmark_tools_ask() {
        assert_eq!(
            parse(&req("CONFIG GET save")),
            Action::Now(Reply::Array(vec![Reply::Bulk(b("save")), Reply::Bulk(b(""))]))
        );
        assert_eq!(parse(&req("CONFIG GET nonexistent")), Action::Now(Reply::Array(vec![])));
        assert!(matches!(parse(&req("CONFIG SET save x")), Action::Now(Reply::Error(_))));
        assert_eq!(parse(&req("COMMAND DOCS")), Action::Now(Reply::Array(vec![])));
    }

    /// Every command counted by `COMMAND COUNT` is answered, not "unknown command".
    #[test]
    fn every_supported_command_is_parsed() {
        for name in SUPPORTED {
            if let Action::Now(Reply::Error(e)) = parse(&[b(name)]) {
                assert!(!e.starts_with("ERR unknown command"), "{name} is in SUPPORTED but unknown: {e}");
            }
        }
    }

    #[test]
    fn hello_answers_for_resp2_and_refuses_other_versions() {
        let Action::Now(Reply::Array(fields)) = parse(&req("HELLO")) else { panic!("HELLO answers a map") };
        assert_eq!(fields.len() % 2, 0, "name/value pairs: {fields:?}");
        let get = |name: &str| {
            fields
                .chunks(2)
                .find(|p| p[0] == Reply::Bulk(b(name)))
                .map(|p| p[1].clone())
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(get("server"), Reply::Bulk(b("skiff")));
        assert_eq!(get("version"), Reply::Bulk(b(env!("CARGO_PKG_VERSION"))));
        assert_eq!(get("proto"), Reply::Int(2));
        assert_eq!(get("id"), Reply::Int(0));
        assert_eq!(get("mode"), Reply::Bulk(b("standalone")));
        assert_eq!(get("role"), Reply::Bulk(b("master")));
        assert_eq!(get("modules"), Reply::Array(vec![]));
        assert_eq!(parse(&req("hello 2")), parse(&req("HELLO")));
        assert_eq!(parse(&req("HELLO 2 SETNAME app")), parse(&req("HELLO")));
        for (r, want) in [
            ("HELLO 3", "NOPROTO unsupported protocol version"),
            ("HELLO 1", "NOPROTO unsupported protocol version"),
            ("HELLO x", "ERR Protocol version is not an integer or out of range"),
            ("HELLO 2 BOGUS", "ERR Syntax error in HELLO option 'BOGUS'"),
            ("HELLO 2 SETNAME", "ERR Syntax error in HELLO option 'SETNAME'"),
            ("HELLO 2 AUTH user", "ERR Syntax error in HELLO option 'AUTH'"),
        ] {
            assert_eq!(parse(&req(r)), Action::Now(Reply::err(want)), "{r}");
        }
        let Action::Now(Reply::Error(e)) = parse(&req("HELLO 2 AUTH user pass")) else { panic!("AUTH refused") };
        assert!(e.contains("AUTH is not supported"), "{e}");
    }

    #[test]
    fn reads_are_served_from_the_state() {
        let mut kv = Kv::new();
        kv.insert(b("a"), b("1"));
        assert_eq!(serve_read(&kv, &Read::Get(b("a"))), Reply::Bulk(b("1")));
        assert_eq!(serve_read(&kv, &Read::Get(b("z"))), Reply::Nil);
        assert_eq!(
            serve_read(&kv, &Read::MGet(vec![b("a"), b("z")])),
            Reply::Array(vec![Reply::Bulk(b("1")), Reply::Nil])
        );
        assert_eq!(serve_read(&kv, &Read::Exists(vec![b("a"), b("a"), b("z")])), Reply::Int(2));
        assert_eq!(serve_read(&kv, &Read::DbSize), Reply::Int(1));
    }

    #[test]
    fn an_mget_whose_reply_would_exceed_the_cap_is_refused() {
        let mut kv = Kv::new();
        let big = Bytes::from(vec![7u8; 4 << 20]);
        kv.insert(b("big"), big.clone());
        let fits = REPLY_BYTES_MAX / (big.len() + 16);
        let r = serve_read(&kv, &Read::MGet(vec![b("big"); fits]));
        assert!(matches!(&r, Reply::Array(v) if v.len() == fits), "{fits} copies fit");
        let Reply::Error(e) = serve_read(&kv, &Read::MGet(vec![b("big"); 65_535])) else { panic!("not refused") };
        assert!(e.contains("fewer keys"), "{e}");
    }
}
