# STAND-IN osg-test's Makefile (tests/test_el_payload.py): `make install` as run-job runs it.
PYTHON ?= python3
install:
	install -D -m 0755 osg-test $(DESTDIR)/usr/sbin/osg-test
	echo "$(PYTHON)" > $(DESTDIR)/usr/share/osg-test-standin-python
