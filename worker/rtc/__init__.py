"""WebRTC calls: the aiortc peer connection and the SDP work around its answer."""
