//! What a command's arguments mean: names matched without regard to case,
//! options parsed and checked as Redis checks them, with Redis's own error
//! texts (clients and tools match on them).

use bytes::Bytes;

use crate::codec::Reply;

/// When a write's value expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// In this many ms from now (`EX`, `PX`, `EXPIRE`, `PEXPIRE`).
    In(i64),
    /// At this Unix time in ms (`EXAT`, `PXAT`, `EXPIREAT`, `PEXPIREAT`).
    At(i64),
}

/// `SET`'s condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exists {
    /// `NX`: only if absent.
    No,
    /// `XX`: only if present.
    Yes,
}

/// `EXPIRE`'s condition (Redis 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireIf {
    /// Only if the key has no expiry.
    Nx,
    /// Only if it has one.
    Xx,
    /// Only if the new expiry is later (no expiry counts as infinite).
    Gt,
    /// Only if earlier.
    Lt,
}

/// What `GETEX` does to the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetEx {
    Keep,
    Set(Expiry),
    Persist,
}

/// One command, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Ping(Option<Bytes>),
    Echo(Bytes),
    Quit,
    Hello {
        proto: Option<i64>,
        auth: Option<(Bytes, Bytes)>,
        name: Option<Bytes>,
    },
    Auth {
        user: Option<Bytes>,
        token: Bytes,
    },
    Select(i64),
    ClientSetName(Bytes),
    ClientGetName,
    ClientId,
    ClientSetInfo,
    Info(Vec<Bytes>),
    CommandCount,
    CommandList,
    CommandDocs,
    ConfigGet(Vec<Bytes>),
    /// `FELIX.USE <cache>`: this connection's cache from now on.
    Use(Bytes),
    Get(Bytes),
    Set {
        key: Bytes,
        value: Bytes,
        expiry: Option<Expiry>,
        cond: Option<Exists>,
        get: bool,
        keep_ttl: bool,
    },
    /// `SETNX`: an integer reply, unlike `SET ... NX`.
    SetNx(Bytes, Bytes),
    GetDel(Bytes),
    GetEx(Bytes, GetEx),
    Del(Vec<Bytes>),
    Exists(Vec<Bytes>),
    MGet(Vec<Bytes>),
    MSet(Vec<(Bytes, Bytes)>),
    Expire {
        key: Bytes,
        at: Expiry,
        cond: Option<ExpireIf>,
    },
    Ttl {
        key: Bytes,
        ms: bool,
    },
    Persist(Bytes),
    IncrBy(Bytes, i64),
    IncrByFloat(Bytes, f64),
    Append(Bytes, Bytes),
    StrLen(Bytes),
    Type(Bytes),
    /// `FELIX.CAS key version value [PX ms]`: write only if the key's
    /// version is `version` (0: only if absent); replies the new version,
    /// or nil when it did not match.
    Cas {
        key: Bytes,
        version: u64,
        value: Bytes,
        ttl_ms: Option<i64>,
    },
    /// `FELIX.VERSION key`: the key's version (nil when absent).
    Version(Bytes),
    Cluster(Cluster),
    /// `READONLY`/`READWRITE`: every read is the leader's here, so both
    /// only say OK.
    ReadMode,
    DbSize,
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`.
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        kind: Option<Bytes>,
    },
    Keys(Bytes),
    /// `FLUSHDB [ASYNC|SYNC]`: both run to the end before the reply.
    FlushDb,
}

impl Command {
    /// The key of a data command that touches that one key and nothing
    /// else (no connection state, no second key): a pipeline's run of such
    /// commands on distinct keys may run at once, since none can see
    /// another's effect.
    pub fn only_key(&self) -> Option<&Bytes> {
        match self {
            Command::Get(k)
            | Command::SetNx(k, _)
            | Command::GetDel(k)
            | Command::GetEx(k, _)
            | Command::Persist(k)
            | Command::IncrBy(k, _)
            | Command::IncrByFloat(k, _)
            | Command::Append(k, _)
            | Command::StrLen(k)
            | Command::Type(k)
            | Command::Version(k) => Some(k),
            Command::Set { key, .. }
            | Command::Expire { key, .. }
            | Command::Ttl { key, .. }
            | Command::Cas { key, .. } => Some(key),
            Command::Del(keys) | Command::Exists(keys) | Command::MGet(keys) if keys.len() == 1 => {
                keys.first()
            }
            _ => None,
        }
    }
}

/// `CLUSTER` subcommands that cluster clients send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cluster {
    Slots,
    Shards,
    Info,
    MyId,
    Nodes,
    KeySlot(Bytes),
}

/// A command this front door answers, as `COMMAND` describes it: cluster
/// clients (redis-py's `RedisCluster`) find a command's keys by these
/// positions (1-based; `last_key` -1: to the end), as in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub name: &'static str,
    /// The argument count with the name; negative: at least that many.
    pub arity: i64,
    /// `write`, `readonly` or `fast` (empty: none).
    pub flag: &'static str,
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flag: &'static str,
    first_key: i64,
    last_key: i64,
    step: i64,
) -> Spec {
    Spec {
        name,
        arity,
        flag,
        first_key,
        last_key,
        step,
    }
}

/// The commands this front door answers, for `COMMAND COUNT`/`COMMAND`.
pub const SPECS: [Spec; 52] = [
    spec("ping", -1, "fast", 0, 0, 0),
    spec("echo", 2, "fast", 0, 0, 0),
    spec("quit", -1, "fast", 0, 0, 0),
    spec("hello", -1, "fast", 0, 0, 0),
    spec("auth", -2, "fast", 0, 0, 0),
    spec("select", 2, "fast", 0, 0, 0),
    spec("client", -2, "fast", 0, 0, 0),
    spec("info", -1, "", 0, 0, 0),
    spec("command", -1, "", 0, 0, 0),
    spec("config", -2, "", 0, 0, 0),
    spec("cluster", -2, "", 0, 0, 0),
    spec("readonly", 1, "fast", 0, 0, 0),
    spec("readwrite", 1, "fast", 0, 0, 0),
    spec("get", 2, "readonly", 1, 1, 1),
    spec("set", -3, "write", 1, 1, 1),
    spec("setnx", 3, "write", 1, 1, 1),
    spec("setex", 4, "write", 1, 1, 1),
    spec("psetex", 4, "write", 1, 1, 1),
    spec("getdel", 2, "write", 1, 1, 1),
    spec("getex", -2, "write", 1, 1, 1),
    spec("getset", 3, "write", 1, 1, 1),
    spec("del", -2, "write", 1, -1, 1),
    spec("unlink", -2, "write", 1, -1, 1),
    spec("exists", -2, "readonly", 1, -1, 1),
    spec("mget", -2, "readonly", 1, -1, 1),
    spec("mset", -3, "write", 1, -1, 2),
    spec("expire", -3, "write", 1, 1, 1),
    spec("pexpire", -3, "write", 1, 1, 1),
    spec("expireat", -3, "write", 1, 1, 1),
    spec("pexpireat", -3, "write", 1, 1, 1),
    spec("ttl", 2, "readonly", 1, 1, 1),
    spec("pttl", 2, "readonly", 1, 1, 1),
    spec("persist", 2, "write", 1, 1, 1),
    spec("incr", 2, "write", 1, 1, 1),
    spec("incrby", 3, "write", 1, 1, 1),
    spec("decr", 2, "write", 1, 1, 1),
    spec("decrby", 3, "write", 1, 1, 1),
    spec("incrbyfloat", 3, "write", 1, 1, 1),
    spec("append", 3, "write", 1, 1, 1),
    spec("strlen", 2, "readonly", 1, 1, 1),
    spec("type", 2, "readonly", 1, 1, 1),
    spec("felix.use", 2, "fast", 0, 0, 0),
    spec("felix.cas", -4, "write", 1, 1, 1),
    spec("felix.version", 2, "readonly", 1, 1, 1),
    spec("dbsize", 1, "readonly", 0, 0, 0),
    spec("scan", -2, "readonly", 0, 0, 0),
    spec("flushdb", -1, "write", 0, 0, 0),
    spec("keys", 2, "readonly", 0, 0, 0),
    spec("flushall", -1, "write", 0, 0, 0),
    spec("multi", 1, "fast", 0, 0, 0),
    spec("exec", 1, "", 0, 0, 0),
    spec("watch", -2, "fast", 1, -1, 1),
];

/// Commands named in [`SPECS`] that this front door refuses with a reason
/// rather than as unknown.
fn refused(name: &str) -> Option<&'static str> {
    match name {
        "flushall" => Some("ERR FLUSHALL would empty every cache the token reaches; use FLUSHDB in each (FELIX.USE picks it)"),
        "multi" | "exec" | "watch" => Some("ERR transactions are not supported; use FELIX.CAS"),
        _ => None,
    }
}

fn arity(name: &str) -> Reply {
    Reply::err(format!("ERR wrong number of arguments for '{name}' command"))
}

fn syntax() -> Reply {
    Reply::err("ERR syntax error")
}

fn not_int() -> Reply {
    Reply::err("ERR value is not an integer or out of range")
}

/// An integer argument as Redis reads one (no blanks, no `+`, no leading
/// zeros beyond `0` itself).
pub fn int(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.len() > 20 || s.starts_with('+') || s.starts_with(' ') {
        return None;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.starts_with('0') && (digits.len() > 1 || s.starts_with('-')) {
        return None;
    }
    s.parse().ok()
}

/// A float argument (`inf` allowed, `nan` not).
pub fn float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let f: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse().ok()?,
    };
    (!f.is_nan()).then_some(f)
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// A positive expiry in the unit given, as ms; `cmd` names the command in
/// the error, as Redis does.
fn expiry_ms(arg: &[u8], unit_ms: i64, cmd: &str) -> Result<i64, Reply> {
    let n = int(arg).ok_or_else(not_int)?;
    if n <= 0 {
        return Err(Reply::err(format!("ERR invalid expire time in '{cmd}' command")));
    }
    n.checked_mul(unit_ms)
        .ok_or_else(|| Reply::err(format!("ERR invalid expire time in '{cmd}' command")))
}

/// Parses one command; `Err` is the reply to send instead (nothing ran).
pub fn parse(args: &[Bytes]) -> Result<Command, Reply> {
    let Some(first) = args.first() else {
        return Err(Reply::err("ERR empty command"));
    };
    let name = String::from_utf8_lossy(first).to_ascii_lowercase();
    let a = &args[1..];
    let n = a.len();
    let want = |ok: bool| if ok { Ok(()) } else { Err(arity(&name)) };
    if let Some(why) = refused(&name) {
        return Err(Reply::err(why));
    }
    Ok(match name.as_str() {
        "ping" => {
            want(n <= 1)?;
            Command::Ping(a.first().cloned())
        }
        "echo" => {
            want(n == 1)?;
            Command::Echo(a[0].clone())
        }
        "quit" => Command::Quit,
        "hello" => {
            let mut proto = None;
            let mut auth = None;
            let mut hname = None;
            let mut i = 0;
            if let Some(v) = a.first() {
                proto =
                    Some(int(v).ok_or_else(|| {
                        Reply::err("ERR Protocol version is not an integer or out of range")
                    })?);
                i = 1;
            }
            while i < n {
                if is(&a[i], "auth") && i + 2 < n {
                    auth = Some((a[i + 1].clone(), a[i + 2].clone()));
                    i += 3;
                } else if is(&a[i], "setname") && i + 1 < n {
                    hname = Some(a[i + 1].clone());
                    i += 2;
                } else {
                    return Err(Reply::err(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&a[i])
                    )));
                }
            }
            Command::Hello {
                proto,
                auth,
                name: hname,
            }
        }
        "auth" => match n {
            1 => Command::Auth {
                user: None,
                token: a[0].clone(),
            },
            2 => Command::Auth {
                user: Some(a[0].clone()),
                token: a[1].clone(),
            },
            _ => return Err(syntax()),
        },
        "select" => {
            want(n == 1)?;
            Command::Select(int(&a[0]).ok_or_else(not_int)?)
        }
        "client" => {
            want(n >= 1)?;
            let sub = String::from_utf8_lossy(&a[0]).to_ascii_lowercase();
            match (sub.as_str(), n) {
                ("setname", 2) => {
                    if a[1].iter().any(|b| *b <= b' ' || *b > b'~') {
                        return Err(Reply::err(
                            "ERR Client names cannot contain spaces, newlines or special characters.",
                        ));
                    }
                    Command::ClientSetName(a[1].clone())
                }
                ("getname", 1) => Command::ClientGetName,
                ("id", 1) => Command::ClientId,
                ("setinfo", 3) => Command::ClientSetInfo,
                ("setname" | "getname" | "id" | "setinfo", _) => return Err(arity(&format!("client|{sub}"))),
                _ => {
                    return Err(Reply::err(format!(
                        "ERR unknown subcommand '{sub}'. Try CLIENT HELP."
                    )))
                }
            }
        }
        "info" => Command::Info(a.to_vec()),
        "command" => match a.first().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()) {
            None => Command::CommandList,
            Some(s) if s == "count" => Command::CommandCount,
            Some(s) if s == "docs" => Command::CommandDocs,
            Some(s) => {
                return Err(Reply::err(format!(
                    "ERR unknown subcommand '{s}'. Try COMMAND HELP."
                )))
            }
        },
        "config" => {
            want(n >= 2)?;
            if !is(&a[0], "get") {
                return Err(Reply::err(
                    "ERR only CONFIG GET is supported: Felix is configured in its own file",
                ));
            }
            Command::ConfigGet(a[1..].to_vec())
        }
        "cluster" => {
            want(n >= 1)?;
            let sub = String::from_utf8_lossy(&a[0]).to_ascii_lowercase();
            Command::Cluster(match (sub.as_str(), n) {
                ("slots", 1) => Cluster::Slots,
                ("shards", 1) => Cluster::Shards,
                ("info", 1) => Cluster::Info,
                ("myid", 1) => Cluster::MyId,
                ("nodes", 1) => Cluster::Nodes,
                ("keyslot", 2) => Cluster::KeySlot(a[1].clone()),
                ("slots" | "shards" | "info" | "myid" | "nodes" | "keyslot", _) => {
                    return Err(arity(&format!("cluster|{sub}")))
                }
                _ => {
                    return Err(Reply::err(format!(
                        "ERR unknown subcommand '{sub}'. Try CLUSTER HELP."
                    )))
                }
            })
        }
        "readonly" | "readwrite" => {
            want(n == 0)?;
            Command::ReadMode
        }
        "felix.use" => {
            want(n == 1)?;
            Command::Use(a[0].clone())
        }
        "get" => {
            want(n == 1)?;
            Command::Get(a[0].clone())
        }
        "set" => {
            want(n >= 2)?;
            parse_set(a)?
        }
        "setnx" => {
            want(n == 2)?;
            Command::SetNx(a[0].clone(), a[1].clone())
        }
        "setex" | "psetex" => {
            want(n == 3)?;
            let unit = if name == "setex" { 1000 } else { 1 };
            Command::Set {
                key: a[0].clone(),
                value: a[2].clone(),
                expiry: Some(Expiry::In(expiry_ms(&a[1], unit, &name)?)),
                cond: None,
                get: false,
                keep_ttl: false,
            }
        }
        "getset" => {
            want(n == 2)?;
            Command::Set {
                key: a[0].clone(),
                value: a[1].clone(),
                expiry: None,
                cond: None,
                get: true,
                keep_ttl: false,
            }
        }
        "getdel" => {
            want(n == 1)?;
            Command::GetDel(a[0].clone())
        }
        "getex" => {
            want(n >= 1)?;
            let how = match &a[1..] {
                [] => GetEx::Keep,
                [p] if is(p, "persist") => GetEx::Persist,
                [o, v] => GetEx::Set(expiry_option(o, v, "getex")?.ok_or_else(syntax)?),
                _ => return Err(syntax()),
            };
            Command::GetEx(a[0].clone(), how)
        }
        "del" | "unlink" => {
            want(n >= 1)?;
            Command::Del(a.to_vec())
        }
        "exists" => {
            want(n >= 1)?;
            Command::Exists(a.to_vec())
        }
        "mget" => {
            want(n >= 1)?;
            Command::MGet(a.to_vec())
        }
        "mset" => {
            want(n >= 2 && n % 2 == 0)?;
            Command::MSet(a.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect())
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            want(n == 2 || n == 3)?;
            let v = int(&a[1]).ok_or_else(not_int)?;
            let unit = if name.starts_with('p') { 1 } else { 1000 };
            let ms = v
                .checked_mul(unit)
                .ok_or_else(|| Reply::err(format!("ERR invalid expire time in '{name}' command")))?;
            let at = if name.ends_with("at") {
                Expiry::At(ms)
            } else {
                Expiry::In(ms)
            };
            let cond = match a.get(2) {
                None => None,
                Some(c) if is(c, "nx") => Some(ExpireIf::Nx),
                Some(c) if is(c, "xx") => Some(ExpireIf::Xx),
                Some(c) if is(c, "gt") => Some(ExpireIf::Gt),
                Some(c) if is(c, "lt") => Some(ExpireIf::Lt),
                Some(c) => {
                    return Err(Reply::err(format!(
                        "ERR Unsupported option {}",
                        String::from_utf8_lossy(c)
                    )))
                }
            };
            Command::Expire {
                key: a[0].clone(),
                at,
                cond,
            }
        }
        "ttl" | "pttl" => {
            want(n == 1)?;
            Command::Ttl {
                key: a[0].clone(),
                ms: name == "pttl",
            }
        }
        "persist" => {
            want(n == 1)?;
            Command::Persist(a[0].clone())
        }
        "incr" | "decr" => {
            want(n == 1)?;
            Command::IncrBy(a[0].clone(), if name == "incr" { 1 } else { -1 })
        }
        "incrby" | "decrby" => {
            want(n == 2)?;
            let by = int(&a[1]).ok_or_else(not_int)?;
            let by = if name == "decrby" {
                by.checked_neg()
                    .ok_or_else(|| Reply::err("ERR decrement would overflow"))?
            } else {
                by
            };
            Command::IncrBy(a[0].clone(), by)
        }
        "incrbyfloat" => {
            want(n == 2)?;
            let by = float(&a[1]).ok_or_else(|| Reply::err("ERR value is not a valid float"))?;
            Command::IncrByFloat(a[0].clone(), by)
        }
        "append" => {
            want(n == 2)?;
            Command::Append(a[0].clone(), a[1].clone())
        }
        "strlen" => {
            want(n == 1)?;
            Command::StrLen(a[0].clone())
        }
        "type" => {
            want(n == 1)?;
            Command::Type(a[0].clone())
        }
        "felix.cas" => {
            want(n == 3 || n == 5)?;
            let version = std::str::from_utf8(&a[1])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Reply::err("ERR the version is not an unsigned integer"))?;
            let ttl_ms = match &a[3..] {
                [] => None,
                [o, v] if is(o, "px") => Some(expiry_ms(v, 1, &name)?),
                [o, v] if is(o, "ex") => Some(expiry_ms(v, 1000, &name)?),
                _ => return Err(syntax()),
            };
            Command::Cas {
                key: a[0].clone(),
                version,
                value: a[2].clone(),
                ttl_ms,
            }
        }
        "felix.version" => {
            want(n == 1)?;
            Command::Version(a[0].clone())
        }
        "dbsize" => {
            want(n == 0)?;
            Command::DbSize
        }
        "keys" => {
            want(n == 1)?;
            Command::Keys(a[0].clone())
        }
        "flushdb" => {
            want(n <= 1)?;
            if a.first().is_some_and(|o| !is(o, "async") && !is(o, "sync")) {
                return Err(syntax());
            }
            Command::FlushDb
        }
        "scan" => {
            want(n >= 1)?;
            parse_scan(a)?
        }
        _ => {
            let shown: Vec<String> = a
                .iter()
                .take(8)
                .map(|x| format!("'{}' ", String::from_utf8_lossy(&x[..x.len().min(64)])))
                .collect();
            return Err(Reply::err(format!(
                "ERR unknown command '{}', with args beginning with: {}",
                String::from_utf8_lossy(&first[..first.len().min(64)]),
                shown.concat()
            )));
        }
    })
}

/// `EX`/`PX`/`EXAT`/`PXAT` and its value; `None` if `opt` is none of them.
fn expiry_option(opt: &[u8], v: &[u8], cmd: &str) -> Result<Option<Expiry>, Reply> {
    Ok(Some(if is(opt, "ex") {
        Expiry::In(expiry_ms(v, 1000, cmd)?)
    } else if is(opt, "px") {
        Expiry::In(expiry_ms(v, 1, cmd)?)
    } else if is(opt, "exat") {
        Expiry::At(expiry_ms(v, 1000, cmd)?)
    } else if is(opt, "pxat") {
        Expiry::At(expiry_ms(v, 1, cmd)?)
    } else {
        return Ok(None);
    }))
}

/// Keys a `SCAN` asks for when it names no `COUNT` (Redis's default).
pub const SCAN_COUNT_DEFAULT: usize = 10;

fn parse_scan(a: &[Bytes]) -> Result<Command, Reply> {
    let cursor = std::str::from_utf8(&a[0])
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Reply::err("ERR invalid cursor"))?;
    let (mut pattern, mut count, mut kind) = (None, SCAN_COUNT_DEFAULT, None);
    let mut i = 1;
    while i < a.len() {
        let Some(v) = a.get(i + 1) else {
            return Err(syntax());
        };
        if is(&a[i], "match") {
            pattern = Some(v.clone());
        } else if is(&a[i], "count") {
            count = match int(v) {
                Some(c) if c >= 1 => c as usize,
                Some(_) => return Err(syntax()),
                None => return Err(not_int()),
            };
        } else if is(&a[i], "type") {
            kind = Some(v.clone());
        } else {
            return Err(syntax());
        }
        i += 2;
    }
    Ok(Command::Scan {
        cursor,
        pattern,
        count,
        kind,
    })
}

fn parse_set(a: &[Bytes]) -> Result<Command, Reply> {
    let mut expiry = None;
    let mut cond = None;
    let mut get = false;
    let mut keep_ttl = false;
    let mut i = 2;
    while i < a.len() {
        let o = &a[i];
        if is(o, "nx") && cond.is_none() {
            cond = Some(Exists::No);
        } else if is(o, "xx") && cond.is_none() {
            cond = Some(Exists::Yes);
        } else if is(o, "get") {
            get = true;
        } else if is(o, "keepttl") && expiry.is_none() {
            keep_ttl = true;
        } else if expiry.is_none() && !keep_ttl && i + 1 < a.len() {
            match expiry_option(o, &a[i + 1], "set")? {
                Some(e) => {
                    expiry = Some(e);
                    i += 1;
                }
                None => return Err(syntax()),
            }
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    Ok(Command::Set {
        key: a[0].clone(),
        value: a[1].clone(),
        expiry,
        cond,
        get,
        keep_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(words: &[&str]) -> Result<Command, Reply> {
        let args: Vec<Bytes> = words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        parse(&args)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn set_options_as_redis_reads_them() {
        assert_eq!(
            p(&["sEt", "k", "v", "px", "1500", "NX", "get"]),
            Ok(Command::Set {
                key: b("k"),
                value: b("v"),
                expiry: Some(Expiry::In(1500)),
                cond: Some(Exists::No),
                get: true,
                keep_ttl: false,
            })
        );
        assert!(matches!(
            p(&["SET", "k", "v", "EXAT", "1700000000"]),
            Ok(Command::Set {
                expiry: Some(Expiry::At(1_700_000_000_000)),
                ..
            })
        ));
        for bad in [
            &["SET", "k", "v", "NX", "XX"][..],
            &["SET", "k", "v", "EX", "1", "PX", "1"],
            &["SET", "k", "v", "KEEPTTL", "EX", "1"],
            &["SET", "k", "v", "EX"],
            &["SET", "k", "v", "BOGUS"],
        ] {
            assert_eq!(p(bad), Err(Reply::err("ERR syntax error")), "{bad:?}");
        }
        assert_eq!(
            p(&["SET", "k", "v", "EX", "0"]),
            Err(Reply::err("ERR invalid expire time in 'set' command"))
        );
        assert_eq!(
            p(&["SET", "k", "v", "EX", "ten"]),
            Err(Reply::err("ERR value is not an integer or out of range"))
        );
        assert_eq!(
            p(&["set", "k"]),
            Err(Reply::err("ERR wrong number of arguments for 'set' command"))
        );
    }

    #[test]
    fn integers_and_floats_as_redis_reads_them() {
        assert_eq!(int(b"-42"), Some(-42));
        assert_eq!(int(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b"+1"[..],
            b" 1",
            b"01",
            b"1.0",
            b"",
            b"9223372036854775808",
            b"-0",
        ] {
            assert_eq!(int(bad), None, "{bad:?}");
        }
        assert_eq!(float(b"10.5"), Some(10.5));
        assert_eq!(float(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(float(b"nan"), None);
        assert_eq!(float(b" 1"), None);
    }

    #[test]
    fn unknown_and_refused_commands_say_so() {
        let Err(Reply::Error(e)) = p(&["FOO", "a", "b"]) else {
            panic!("FOO parsed")
        };
        assert_eq!(e, "ERR unknown command 'FOO', with args beginning with: 'a' 'b' ");
        let Err(Reply::Error(e)) = p(&["flushall"]) else {
            panic!("FLUSHALL parsed")
        };
        assert!(e.contains("FLUSHDB"), "{e}");
        let Err(Reply::Error(e)) = p(&["multi"]) else {
            panic!("MULTI parsed")
        };
        assert!(e.contains("not supported"), "{e}");
        assert_eq!(parse(&[]), Err(Reply::err("ERR empty command")));
    }

    #[test]
    fn key_iteration_commands_and_their_options() {
        assert_eq!(
            p(&["SCAN", "0"]),
            Ok(Command::Scan {
                cursor: 0,
                pattern: None,
                count: SCAN_COUNT_DEFAULT,
                kind: None
            })
        );
        assert_eq!(
            p(&[
                "scan",
                "18446744073709551615",
                "match",
                "user:*",
                "COUNT",
                "100",
                "type",
                "string"
            ]),
            Ok(Command::Scan {
                cursor: u64::MAX,
                pattern: Some(b("user:*")),
                count: 100,
                kind: Some(b("string"))
            })
        );
        assert_eq!(p(&["scan", "-1"]), Err(Reply::err("ERR invalid cursor")));
        assert_eq!(p(&["scan", "x"]), Err(Reply::err("ERR invalid cursor")));
        assert_eq!(
            p(&["scan", "0", "count", "0"]),
            Err(Reply::err("ERR syntax error"))
        );
        assert_eq!(
            p(&["scan", "0", "count", "many"]),
            Err(Reply::err("ERR value is not an integer or out of range"))
        );
        assert_eq!(p(&["scan", "0", "match"]), Err(Reply::err("ERR syntax error")));
        assert_eq!(
            p(&["scan", "0", "limit", "3"]),
            Err(Reply::err("ERR syntax error"))
        );
        assert_eq!(p(&["dbsize"]), Ok(Command::DbSize));
        assert_eq!(
            p(&["dbsize", "x"]),
            Err(Reply::err("ERR wrong number of arguments for 'dbsize' command"))
        );
        assert_eq!(p(&["KEYS", "*"]), Ok(Command::Keys(b("*"))));
        assert_eq!(p(&["flushdb"]), Ok(Command::FlushDb));
        assert_eq!(p(&["flushdb", "ASYNC"]), Ok(Command::FlushDb));
        assert_eq!(p(&["flushdb", "later"]), Err(Reply::err("ERR syntax error")));
    }

    #[test]
    fn counters_expiry_and_extras() {
        assert_eq!(p(&["DECRBY", "n", "5"]), Ok(Command::IncrBy(b("n"), -5)));
        assert_eq!(
            p(&["decrby", "n", "-9223372036854775808"]),
            Err(Reply::err("ERR decrement would overflow"))
        );
        assert_eq!(
            p(&["PEXPIREAT", "k", "5", "GT"]),
            Ok(Command::Expire {
                key: b("k"),
                at: Expiry::At(5),
                cond: Some(ExpireIf::Gt)
            })
        );
        assert_eq!(
            p(&["GETEX", "k", "PERSIST"]),
            Ok(Command::GetEx(b("k"), GetEx::Persist))
        );
        assert_eq!(
            p(&["felix.cas", "k", "0", "v", "PX", "10"]),
            Ok(Command::Cas {
                key: b("k"),
                version: 0,
                value: b("v"),
                ttl_ms: Some(10)
            })
        );
        assert_eq!(p(&["MSET", "a", "1", "b"]), Err(arity("mset")));
        assert_eq!(
            p(&["hello", "3", "auth", "u", "t", "setname", "n"]),
            Ok(Command::Hello {
                proto: Some(3),
                auth: Some((b("u"), b("t"))),
                name: Some(b("n"))
            })
        );
    }
}
