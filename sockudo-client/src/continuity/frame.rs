//! What a [`Continuity`](super::Continuity) orders by serial: a message to deliver, or a
//! serial used by a message withheld from this connection.

use crate::event::Message;
use crate::positions::Position;

/// A positioned frame of one channel.
#[derive(Debug)]
pub(super) enum Frame {
    /// A broadcast for the application.
    Message(Message),
    /// `sockudo_internal:position`: the serial was taken by a message the server did not
    /// send to this connection (its own client event, or an API publish excluding its
    /// socket). It moves the position exactly like a delivered message, with nothing to
    /// hand to the application.
    Withheld(Position),
}

impl Frame {
    /// `(stream_id, serial)` when the frame is part of the stream.
    pub(super) fn place(&self) -> Option<(&str, u64)> {
        match self {
            Frame::Message(m) => m.stream_id.as_deref().zip(m.serial),
            Frame::Withheld(p) => Some((p.stream_id.as_str(), p.serial)),
        }
    }

    pub(super) fn serial(&self) -> Option<u64> {
        self.place().map(|(_, serial)| serial)
    }

    pub(super) fn message_id(&self) -> Option<&str> {
        match self {
            Frame::Message(m) => m.message_id.as_deref(),
            Frame::Withheld(_) => None,
        }
    }

    pub(super) fn is_message(&self) -> bool {
        matches!(self, Frame::Message(_))
    }
}

/// Frames in serial order (frames without a serial first, in arrival order). For one serial
/// a withheld marker goes before a message: that message can only be the replay of the
/// connection's own event, which must not be echoed back, and after the marker it is a
/// duplicate.
pub(super) fn sorted(mut frames: Vec<Frame>) -> Vec<Frame> {
    frames.sort_by_key(|f| (f.serial(), f.is_message()));
    frames
}
