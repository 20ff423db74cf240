//! Where a registry name leads, looked up before Hive lets the engine dial it.
//!
//! A name is not an address: `my-registry.example:5000` may resolve (through DNS or
//! `/etc/hosts`) to the host's loopback or a private network, where a pull would make the
//! engine reach what it should not. So a registry's host is resolved, by the system's
//! resolver as the engine would, and refused if any address it leads to is not public
//! ([`crate::image::is_public`]) unless the policy lists the registry
//! (`images.privateRegistries`); a name that does not resolve in time is refused too.
//!
//! Lookups run on blocking threads (getaddrinfo blocks), at most [`CONCURRENT`] at once,
//! each bounded by [`TIMEOUT`], and their answers (good or bad) are kept for [`KEEP`], so
//! a flood of names costs a few threads and no more. `--resolve NAME=IP` pins a name for
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
/// How long an answer is kept.
const KEEP: Duration = Duration::from_secs(30);
/// Answers kept at most (the oldest go first).
const KEEP_AT_MOST: usize = 4096;

/// The addresses a name resolves to, or why it does not.
type Answer = Result<Vec<IpAddr>, String>;

/// Looks host names up, with pins, a bound and a memory.
pub struct Resolver {
    /// `--resolve` pins.
    pinned: HashMap<String, Vec<IpAddr>>,
    /// Recent answers.
    answers: Mutex<HashMap<String, (Instant, Answer)>>,
    /// Places for lookups running at once.
    slots: tokio::sync::Semaphore,
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
            slots: tokio::sync::Semaphore::new(CONCURRENT),
        })
    }

    /// The addresses `host` resolves to, or why it does not.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
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
        let answer = match tokio::time::timeout(TIMEOUT, self.ask(&host)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("it did not resolve within {}s", TIMEOUT.as_secs())),
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

    /// One lookup through the system's resolver, on a blocking thread.
    async fn ask(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| "the resolver is closed".to_string())?;
        let target = format!("{host}:0");
        let ips: Vec<IpAddr> = tokio::net::lookup_host(target)
            .await
            .map_err(|e| format!("it does not resolve ({e})"))?
            .map(|a| a.ip())
            .collect();
        if ips.is_empty() {
            return Err("it resolves to no address".into());
        }
        Ok(ips)
    }

    /// Why a registry host may not be pulled from: it resolves to an address that is
    /// not public (named), or does not resolve. None: every address is public.
    pub async fn non_public(&self, host: &str) -> Option<String> {
        match self.lookup(host).await {
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
        assert_eq!(
            r.lookup("reg.test").await.unwrap(),
            ["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(r
            .non_public("REG.TEST")
            .await
            .unwrap()
            .contains("127.0.0.1"));
        assert_eq!(r.non_public("pub.test").await, None);
        assert!(r
            .non_public("2130706433")
            .await
            .unwrap()
            .contains("127.0.0.1"));
        // /etc/hosts always names localhost.
        assert!(r.non_public("localhost").await.is_some());
        // A name that cannot resolve is refused, saying so.
        assert!(r
            .non_public("nothing.invalid")
            .await
            .unwrap()
            .contains("resolve"));
        assert!(Resolver::new(&["x".into()]).is_err());
        assert!(Resolver::new(&["x=y".into()]).is_err());
    }
}
