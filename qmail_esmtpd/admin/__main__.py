"""`python -m qmail_esmtpd.admin`: the tool without its installed script."""

import sys

from . import main

sys.exit(main())
