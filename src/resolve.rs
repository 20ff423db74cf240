//! Where a registry name leads, looked up before Hive lets the engine dial it.
//!
//! A name is not an address: `my-registry.example:5000` may resolve (through DNS or
//! `/etc/hosts`) to the host's loopback or a private network, where a pull would make the
//! engine reach what it should not. So a registry's host is resolved, by the system's
//! resolver as the engine would, and refused if any address it leads to is not public
//! ([`crate::image::is_public`]) unless the policy lists the registry
//! (`images.privateRegistries`); a name that does not resolve in time is refused too.
//!
//! Lookups run on blocking threads (getaddrinfo blocks), at most [`CONCURRENT`] at once
//! and [`PER_OWNER`] for one owner: a lookup holds its place until the system's call
//! returns, even after its caller stopped waiting ([`TIMEOUT`]), so a flood of names that
//! never answer costs a few threads and no more, and one owner's flood leaves the others
//! their places. Answers (good or bad) are kept for [`KEEP`]. `--resolve NAME=IP` pins a name for
//! Hive's own lookups, as curl's `--resolve` does (tests use it; the engine still resolves
//! names itself, so a name that changes its answer between Hive's look and the engine's
//! pull can still mislead it: SECURITY.md says so).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a lookup may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Lookups running at once.
pub const CONCURRENT: usize = 8;
/// Lookups one owner may have running at once.
pub const PER_OWNER: usize = 2;
/// How long an answer is kept.
const KEEP: Duration = Duration::from_secs(30);
/// Answers kept at most (the oldest go first).
const KEEP_AT_MOST: usize = 4096;

/// The addresses a name resolves to, or why it does not.
type Answer = Result<Vec<IpAddr>, String>;

/// No place to look a name up now.
struct Busy(String);

/// Looks host names up, with pins, a bound and a memory.
pub struct Resolver {
    /// `--resolve` pins.
    pinned: HashMap<String, Vec<IpAddr>>,
    /// Recent answers.
    answers: Mutex<HashMap<String, (Instant, Answer)>>,
    /// Places for lookups running at once.
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Places for lookups per owner.
    owners: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
}

impl Resolver {
    /// A resolver with these pins (`NAME=IP`, as `--resolve` takes them).
    pub fn new(pins: &[String]) -> Result<Resolver, String> {
        let mut pinned: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for pin in pins {
            let (name, ip) = pin
                .split_once('=')
                .ok_or_else(|| format!("--resolve {pin:?}: expected NAME=IP"))?;
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("--resolve {pin:?}: {ip:?} is not an IP address"))?;
            pinned
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(ip);
        }
        Ok(Resolver {
            pinned,
            answers: Mutex::default(),
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT)),
            owners: Mutex::default(),
        })
    }

    /// The addresses `host` resolves to (looked up on `owner`'s behalf), or why it does
    /// not.
    pub async fn lookup(&self, owner: &str, host: &str) -> Result<Vec<IpAddr>, String> {
        let host = host.to_ascii_lowercase();
        if let Some(ips) = self.pinned.get(&host) {
            return Ok(ips.clone());
        }
        if let Some(ip) = crate::image::literal_address(&host) {
            return Ok(vec![ip]);
        }
        if let Some(answer) = self.kept(&host) {
            return answer;
        }
        let answer = match self.ask(owner, &host).await {
            Ok(answer) => answer,
            // Busy: not an answer about the name, so not kept.
            Err(Busy(why)) => return Err(why),
        };
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.len() >= KEEP_AT_MOST {
            answers.retain(|_, (at, _)| at.elapsed() < KEEP);
        }
        if answers.len() < KEEP_AT_MOST {
            answers.insert(host, (Instant::now(), answer.clone()));
        }
        answer
    }

    fn kept(&self, host: &str) -> Option<Result<Vec<IpAddr>, String>> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers
            .get(host)
            .filter(|(at, _)| at.elapsed() < KEEP)
            .map(|(_, answer)| answer.clone())
    }

    /// One lookup through the system's resolver, on a blocking thread that holds its
    /// places (the resolver's and the owner's) until the call returns. The outer error:
    /// no place was free, which says nothing about the name.
    async fn ask(&self, owner: &str, host: &str) -> Result<Result<Vec<IpAddr>, String>, Busy> {
        let owners_places = self
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(owner.to_string())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(PER_OWNER)))
            .clone();
        let busy = || Busy("every registry lookup place is taken; try again".into());
        let owner_place = tokio::time::timeout(TIMEOUT, owners_places.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Busy(format!(
                    "{PER_OWNER} registry lookups of owner {owner:?} are running; try again"
                ))
            })?;
        let place = tokio::time::timeout(TIMEOUT, self.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(busy)?;
        let target = format!("{host}:0");
        let call = tokio::task::spawn_blocking(move || {
            let _places = (place, owner_place);
            use std::net::ToSocketAddrs;
            target
                .to_socket_addrs()
                .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
        });
        Ok(match tokio::time::timeout(TIMEOUT, call).await {
            Err(_) => Err(format!("it did not resolve within {}s", TIMEOUT.as_secs())),
            Ok(Err(e)) => Err(format!("its lookup failed ({e})")),
            Ok(Ok(Err(e))) => Err(format!("it does not resolve ({e})")),
            Ok(Ok(Ok(ips))) if ips.is_empty() => Err("it resolves to no address".into()),
            Ok(Ok(Ok(ips))) => Ok(ips),
        })
    }

    /// Why a registry host may not be pulled from (looked up on `owner`'s behalf): it
    /// resolves to an address that is not public (named), or does not resolve. None:
    /// every address is public.
    pub async fn non_public(&self, owner: &str, host: &str) -> Option<String> {
        match self.lookup(owner, host).await {
            Ok(ips) => ips
                .into_iter()
                .find(|ip| !crate::image::is_public(*ip))
                .map(|ip| {
                    format!("it resolves to {ip}, an address on this host or a private network")
                }),
            Err(why) => Some(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pins_literals_and_names_resolve_and_private_answers_are_named() {
        let r = Resolver::new(&["Reg.Test=127.0.0.1".into(), "pub.test=8.8.8.8".into()]).unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(r.lookup("o", "reg.test").await.unwrap(), [loopback]);
        let why = r.non_public("o", "REG.TEST").await.unwrap();
        assert!(why.contains("127.0.0.1"), "{why}");
        assert_eq!(r.non_public("o", "pub.test").await, None);
        let why = r.non_public("o", "2130706433").await.unwrap();
        assert!(why.contains("127.0.0.1"), "{why}");
        // /etc/hosts always names localhost.
        assert!(r.non_public("o", "localhost").await.is_some());
        // A name that cannot resolve is refused, saying so.
        let why = r.non_public("o", "nothing.invalid").await.unwrap();
        assert!(why.contains("resolve"), "{why}");
        assert!(Resolver::new(&["x".into()]).is_err());
        assert!(Resolver::new(&["x=y".into()]).is_err());
    }

    #[tokio::test]
    async fn an_owner_holds_at_most_its_share_of_lookups() {
        let r = Resolver::new(&[]).unwrap();
        let places = r
            .owners
            .lock()
            .unwrap()
            .entry("sol".into())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(PER_OWNER)))
            .clone();
        // sol's places all held (by lookups that never answer): sol waits, then hears so;
        // another owner looks up at once.
        let _held = places.acquire_many(PER_OWNER as u32).await.unwrap();
        let why = r.lookup("sol", "a.invalid").await.unwrap_err();
        assert!(why.contains("of owner \"sol\" are running"), "{why}");
        let why = r.lookup("bob", "a.invalid").await.unwrap_err();
        assert!(why.contains("resolve"), "{why}");
    }
}
