//! Where the primary sends a command.

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{Destination, WorkerId, WorkerSelector};

/// What the primary knows about one worker when it routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry<'a> {
    /// The worker's id.
    pub id: WorkerId,
    /// Its name.
    pub name: &'a str,
    /// Whether it is connected and can take commands now.
    pub connected: bool,
}

/// Where the primary sends a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The primary runs it.
    Primary,
    /// One worker runs it.
    Worker(WorkerId),
    /// These workers run it, in id order; the reply gathers all answers.
    Broadcast(Vec<WorkerId>),
}

/// Decides where a command with `destination`, received by the primary, goes.
///
/// `workers` is the primary's directory in any order. Names are unique among workers (the primary
/// refuses a duplicate name at fork), so a name selects at most one worker.
pub fn route(destination: &Destination, workers: &[RouteEntry<'_>]) -> Result<Route> {
    match destination {
        Destination::Primary | Destination::Here => Ok(Route::Primary),
        Destination::AllWorkers => {
            let mut ids: Vec<WorkerId> = workers.iter().filter(|w| w.connected).map(|w| w.id).collect();
            ids.sort();
            Ok(Route::Broadcast(ids))
        }
        Destination::Worker(selector) => {
            let found = workers.iter().find(|w| match selector {
                WorkerSelector::Id(id) => w.id == *id,
                WorkerSelector::Name(name) => w.name == name,
            });
            match found {
                Some(w) if w.connected => Ok(Route::Worker(w.id)),
                Some(w) => Err(Error::new(
                    ErrorKind::WorkerExited,
                    format!("{selector} is not connected (exited or still starting); retry once it is ready"),
                )
                .with_context("worker", w.name)),
                None => {
                    let mut names: Vec<&str> = workers.iter().map(|w| w.name).collect();
                    names.sort_unstable();
                    Err(Error::new(
                        ErrorKind::UnknownWorker,
                        format!("no {selector} in this cluster; known workers: [{}]", names.join(", ")),
                    )
                    .with_context("target", selector))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Vec<RouteEntry<'static>> {
        vec![
            RouteEntry { id: WorkerId(2), name: "Sarah", connected: true },
            RouteEntry { id: WorkerId(1), name: "Paul", connected: true },
            RouteEntry { id: WorkerId(3), name: "John", connected: false },
        ]
    }

    #[test]
    fn routes_by_name_id_and_broadcast() {
        let dir = directory();
        assert_eq!(route(&Destination::Worker("Sarah".into()), &dir).unwrap(), Route::Worker(WorkerId(2)));
        assert_eq!(
            route(&Destination::Worker(WorkerId(1).into()), &dir).unwrap(),
            Route::Worker(WorkerId(1))
        );
        assert_eq!(
            route(&Destination::AllWorkers, &dir).unwrap(),
            Route::Broadcast(vec![WorkerId(1), WorkerId(2)])
        );
        assert_eq!(route(&Destination::Primary, &dir).unwrap(), Route::Primary);
    }

    #[test]
    fn routing_to_missing_or_disconnected_workers_says_why() {
        let dir = directory();
        let err = route(&Destination::Worker("Nobody".into()), &dir).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownWorker);
        assert!(err.to_string().contains("Paul, Sarah"), "{err}");
        let err = route(&Destination::Worker("John".into()), &dir).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WorkerExited);
    }
}
