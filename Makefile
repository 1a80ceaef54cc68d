# The two commands of the README's quick start: `make demo` and `make test`.
# Both build the virtualenv from pyproject.toml first; nothing else is needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean sysdeps azurite

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

# System tools the tests drive for real: loop devices and file systems (util-linux,
# e2fsprogs, xfsprogs for reflink), QEMU's image tools and storage daemon (FUSE exports),
# LVM's tools (snapshots of logical volumes; busybox and kmod build the small VM whose
# kernel has the device-mapper LVM needs, where the host's has none), Chromium for the
# dashboard's browser tests (Playwright drives it; it downloads no browser), the QEMU guest
# agent (file-system freeze inside a guest), virsh (libvirt discovery, against libvirt's
# daemonless test driver), PostgreSQL (the catalog's other database; tests start their own),
# Redis (a fleet's broker, admission and budgets; tests start their own), nbdkit with its
# Python plugin (`vmvault export` serves a recovery point over NBD) and libnbd's tools
# (nbdcopy, nbdinfo: the export's clients in the tests, beside qemu-img and qemu-io), and
# what makes the guest disk of the file-level restore tests: sfdisk (a GPT table), the
# FAT and NTFS tools (mkfs.vfat, mtools, mkntfs and ntfs-3g).
# Installed from Debian when missing.
sysdeps:
	@missing=""; \
	command -v losetup >/dev/null || missing="$$missing util-linux"; \
	command -v mkfs.ext4 >/dev/null || missing="$$missing e2fsprogs"; \
	command -v mkfs.xfs >/dev/null || missing="$$missing xfsprogs"; \
	command -v qemu-img >/dev/null || missing="$$missing qemu-utils"; \
	command -v qemu-storage-daemon >/dev/null || missing="$$missing qemu-system-common"; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	command -v fusermount3 >/dev/null || missing="$$missing fuse3"; \
	command -v lvs >/dev/null || missing="$$missing lvm2"; \
	command -v busybox >/dev/null || missing="$$missing busybox-static"; \
	command -v depmod >/dev/null || [ -x /sbin/depmod ] || missing="$$missing kmod"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v qemu-ga >/dev/null || missing="$$missing qemu-guest-agent"; \
	command -v virsh >/dev/null || missing="$$missing libvirt-clients"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v nbdkit >/dev/null || missing="$$missing nbdkit"; \
	ls /usr/lib/*/nbdkit/plugins/nbdkit-python-plugin.so >/dev/null 2>&1 || \
		missing="$$missing nbdkit-plugin-python"; \
	command -v nbdcopy >/dev/null || missing="$$missing libnbd-bin"; \
	command -v sfdisk >/dev/null || missing="$$missing fdisk"; \
	command -v mkfs.vfat >/dev/null || missing="$$missing dosfstools"; \
	command -v mcopy >/dev/null || missing="$$missing mtools"; \
	command -v mkntfs >/dev/null || missing="$$missing ntfs-3g"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $$missing >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }; \
	fi

demo: $(STAMP) sysdeps
	$(BIN)/vmvault demo

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)
	$(BIN)/mypy

# Azurite, Microsoft's Azure Storage emulator, for the azure-marked tests
# (tests/support/azuritekit.py): its blob server from npm when missing (Node.js from Debian
# first, if that is missing too).
AZURITE_VERSION := 3.37.0
azurite:
	@command -v azurite-blob >/dev/null || { \
		command -v npm >/dev/null || { \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -q nodejs npm >/dev/null || \
			{ apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null; }; \
		}; \
		echo "installing: azurite@$(AZURITE_VERSION) (npm)"; \
		npm install -g --no-fund --no-audit azurite@$(AZURITE_VERSION) >/dev/null; \
	}

test: $(STAMP) sysdeps azurite lint
	$(BIN)/pytest -n auto -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
