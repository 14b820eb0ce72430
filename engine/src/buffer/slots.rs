//! The channel table's states by id: a vector indexed by id for the ids a
//! shard hands out (dense, from 0), and a map for the few a lenient replay
//! of a damaged log may meet far beyond them — so that a crafted id never
//! sizes the vector.

use std::collections::HashMap;

use crate::types::ChannelId;

use super::channel::ChannelState;

/// How far past the vector's end an id may be and still extend it.
const DENSE_REACH: usize = 1 << 16;

/// Channel states by id.
#[derive(Debug, Default)]
pub struct Slots {
    dense: Vec<Option<ChannelState>>,
    sparse: HashMap<ChannelId, ChannelState>,
}

impl Slots {
    /// The state of `id`.
    pub fn get(&self, id: &ChannelId) -> Option<&ChannelState> {
        match self.dense.get(id.0 as usize) {
            Some(slot) => slot.as_ref(),
            None => self.sparse.get(id),
        }
    }

    /// The state of `id`, to change.
    pub fn get_mut(&mut self, id: &ChannelId) -> Option<&mut ChannelState> {
        match self.dense.get_mut(id.0 as usize) {
            Some(slot) => slot.as_mut(),
            None => self.sparse.get_mut(id),
        }
    }

    /// Whether `id` has a state.
    pub fn contains_key(&self, id: &ChannelId) -> bool {
        self.get(id).is_some()
    }

    /// Keeps `state` as the state of `id` (which has none).
    pub fn insert(&mut self, id: ChannelId, state: ChannelState) {
        let i = id.0 as usize;
        if i < self.dense.len() + DENSE_REACH && !self.sparse.contains_key(&id) {
            if i >= self.dense.len() {
                self.dense.resize_with(i + 1, || None);
                // Ids the vector now covers leave the map.
                let moved: Vec<ChannelId> = self
                    .sparse
                    .keys()
                    .filter(|k| (k.0 as usize) < self.dense.len())
                    .copied()
                    .collect();
                for k in moved {
                    self.dense[k.0 as usize] = self.sparse.remove(&k);
                }
            }
            debug_assert!(self.dense[i].is_none(), "a channel id inserted twice");
            self.dense[i] = Some(state);
        } else {
            self.sparse.insert(id, state);
        }
    }

    /// Every state, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &ChannelState> {
        self.dense.iter().flatten().chain(self.sparse.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CommitSeq, Offset};

    fn state(id: u32) -> ChannelState {
        ChannelState::new(ChannelId(id), "c".into(), Offset(0), CommitSeq(1))
    }

    /// Ids in order fill the vector; one far beyond goes to the map, and
    /// moves into the vector once the ids reach it.
    #[test]
    fn far_ids_never_size_the_vector() {
        let mut s = Slots::default();
        for i in 0..10 {
            s.insert(ChannelId(i), state(i));
        }
        s.insert(ChannelId(1 << 30), state(1 << 30));
        assert!(s.dense.len() <= 10 + DENSE_REACH);
        assert_eq!(s.sparse.len(), 1);
        let near = 10 + DENSE_REACH as u32 - 1;
        s.insert(ChannelId(near), state(near));
        assert!(s.get(&ChannelId(near)).is_some());
        assert!(s.get(&ChannelId(1 << 30)).is_some());
        assert!(s.get(&ChannelId(12)).is_none());
        assert_eq!(s.values().count(), 12);
        assert_eq!(s.get_mut(&ChannelId(3)).map(|c| c.id()), Some(ChannelId(3)));
    }

    /// An idle channel's state stays small: its records live apart.
    #[test]
    fn an_idle_channel_state_stays_small() {
        assert!(
            std::mem::size_of::<Option<ChannelState>>() <= 104,
            "{} bytes",
            std::mem::size_of::<Option<ChannelState>>()
        );
    }
}
