"""The core records as types: job kinds and states, recovery points and their disks, a VM's
protection. Each round-trips to the JSON vmvault stores and shows (``to_dict``/``from_dict``)."""
