"""A real RTSP server on 127.0.0.1 for tests/test_rtsp.py: GStreamer's gst-rtsp-server, run by the SYSTEM python3
(it needs `gi`, which the project's virtualenv does not have). Debian packages: python3-gi
gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly.

    python3 tests/rtsp_server.py [--port 0] [--user U --password P] [--check]

Serves a live 30 fps H.264 test pattern (moving ball) at rtsp://127.0.0.1:PORT/cam and prints the bound
port as the first line of stdout once it accepts connections; it exits when its stdin closes. With
--user/--password a client must log in (HTTP basic). --check exits 0 if everything the server needs is
installed, else 3 and names what is missing.
"""

import argparse
import os
import sys
import threading

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! rtph264pay name=pay0 pt=96 )"
)
ELEMENTS = ("videotestsrc", "x264enc", "rtph264pay")


def _missing() -> str | None:
    """None if the server can run, else what is missing (and the Debian package that has it)."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst, GstRtspServer  # noqa: F401
    except (ImportError, ValueError) as e:
        return f"gst-rtsp-server's Python bindings ({e}); install python3-gi gir1.2-gst-rtsp-server-1.0"
    Gst.init(None)
    absent = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if absent:
        return (f"GStreamer elements {absent}; install gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                "gstreamer1.0-plugins-ugly")
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="0 = any free port (the bound one is printed)")
    p.add_argument("--user", default="")
    p.add_argument("--password", default="")
    p.add_argument("--size", default="160x120", help="WxH of the test pattern")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--check", action="store_true", help="only check that the server can run")
    args = p.parse_args()
    missing = _missing()
    if missing or args.check:
        print(f"missing: {missing}" if missing else "ok", flush=True)
        return 3 if missing else 0

    from gi.repository import GLib, Gst, GstRtspServer

    w, h = (int(v) for v in args.size.split("x"))
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(w=w, h=h, fps=args.fps))
    factory.set_shared(True)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        factory.add_role_from_structure(Gst.Structure.new_from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
    server.get_mount_points().add_factory("/cam", factory)
    if not server.attach(None):
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    print(server.get_bound_port(), flush=True)
    # stdin is a pipe from the test: when the test process goes away, so does the server (no orphans)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
