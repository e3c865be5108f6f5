//! One turn of the owner task: the events that are ready, handled one after another; then
//! the work they left due, done once (the routes to other hosts' blocks, the name
//! service's zone, the save of the own records); then their answers.
//!
//! A burst of ADDs (a node starting a hundred pods) would otherwise cost every ADD a
//! rebuild of the zone and a write of every own record, and the owner task, one thread
//! among the hundred plugin processes the burst starts, would fall seconds behind. Answers
//! wait for the end of the turn, so an answered request's records are on disk and its names
//! are in the zone, as when each event did that work itself.

use tokio::sync::{mpsc, oneshot};

use crate::{Agent, Event};

/// Most events handled in one turn: a turn stays short enough for the ticks.
pub(crate) const MAX_EVENTS: usize = 64;

/// An answer to an API request.
pub(crate) type Reply = oneshot::Sender<(u16, String)>;

/// What the events of the current turn left due.
#[derive(Default)]
pub(crate) struct Turn {
    /// The own records changed: write them at the end of the turn.
    save: bool,
    /// A peer changed the mesh: bring the IPAM's view and the routes up to date at the end
    /// of the turn, before the zone.
    routes: bool,
    /// The mesh changed: rebuild the zone (if it changed) at the end of the turn.
    dns: bool,
    /// Answers held until the work above is done.
    answers: Vec<(Reply, (u16, String))>,
}

impl Agent {
    /// Handles `first`, then the events already waiting, up to [`MAX_EVENTS`].
    pub(crate) fn on_events(&mut self, first: Event, rx: &mut mpsc::UnboundedReceiver<Event>) {
        self.on_event(first);
        for _ in 1..MAX_EVENTS {
            match rx.try_recv() {
                Ok(ev) => self.on_event(ev),
                Err(_) => break,
            }
        }
    }

    /// Answers `reply` at the end of the turn.
    pub(crate) fn answer(&mut self, reply: Reply, answer: (u16, String)) {
        self.turn.answers.push((reply, answer));
    }

    /// The own records are written at the end of the turn.
    pub(crate) fn save(&mut self) {
        self.turn.save = true;
    }

    /// The zone is brought up to date at the end of the turn.
    pub(crate) fn dns_refresh(&mut self) {
        self.turn.dns = true;
    }

    /// The IPAM's view and the routes are brought up to date at the end of the turn.
    pub(crate) fn routes_refresh(&mut self) {
        self.turn.routes = true;
    }

    /// Ends the turn: the routes, the zone, the save, then the answers.
    ///
    /// The routes come first: a name this host answers for a container of another host
    /// is routed here by then. With the routes left to the tick, a container's name
    /// resolved up to a tick before its host's new block was routed, and a client's
    /// first packet to it was lost.
    pub(crate) fn end_turn(&mut self) {
        if std::mem::take(&mut self.turn.routes) {
            self.ipam_step();
            self.dp_tick();
        }
        if std::mem::take(&mut self.turn.dns) {
            self.dns_rebuild();
        }
        if std::mem::take(&mut self.turn.save) {
            self.save_now();
        }
        for (reply, answer) in std::mem::take(&mut self.turn.answers) {
            let _ = reply.send(answer);
        }
    }
}
