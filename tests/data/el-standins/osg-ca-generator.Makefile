# STAND-IN osg-ca-generator's Makefile (tests/test_el_payload.py).
PYTHON ?= python3
install:
	install -D -m 0755 osg-ca-generator $(DESTDIR)/usr/bin/osg-ca-generator
