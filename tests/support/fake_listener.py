# A fake keyward socket, for the tests of the clients' check of who serves
# the socket: run as another uid, it accepts one connection at PATH
# (replacing what is there), reads it until the client closes it or 3 s of
# silence, and writes the number of bytes received to OUT (and OUT.ready
# once it listens).
#
# python3 fake_listener.py PATH OUT
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
open(out + ".ready", "w").close()
s.settimeout(30)
total = 0
try:
    c, _ = s.accept()
    c.settimeout(3)
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            total += len(b)
    except socket.timeout:
        pass
    c.close()
except socket.timeout:
    pass
with open(out, "w") as f:
    f.write(str(total))
