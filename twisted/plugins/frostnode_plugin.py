"""
The C{frostnode} twistd plugin: C{twistd -n frostnode --config node.toml}.

Only a L{ServiceMaker}, which imports L{frostnode.tap} when the plugin is used,
so that plugin discovery (for every twistd command) stays cheap.  This
directory has no C{__init__.py} on purpose: it extends Twisted's own
C{twisted.plugins} package and must not replace it.
"""

from twisted.application.service import ServiceMaker

FrostNode = ServiceMaker("frostnode", "frostnode.tap", "FROST threshold signing node", "frostnode")
