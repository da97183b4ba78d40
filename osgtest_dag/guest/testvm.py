"""What makes a booted image a quick test VM: the units, generators and kernel modules its boot
skips, the services that start without their sandbox, the journal in memory. Each of these costs
a second or more of an emulated (TCG) boot, in a VM that boots once from a fresh copy of the
image and is thrown away; what the cell tests is untouched."""

from __future__ import annotations

# The journal lives in memory: the VM is thrown away, and the collect phase reads it before
# power-off (no flush to /var/log/journal at boot).
JOURNALD_CONF = """\
[Journal]
Storage=volatile
RateLimitBurst=100000
"""

# Units that would write to the disk or the console behind the test's back, and units that
# do nothing in a VM that boots once from a fresh copy of the image (each costs a second or
# more of an emulated CPU at boot).
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "systemd-journal-flush.service",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-pstore.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "dev-hugepages.mount",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@configfs.service",
    # loaded when first used: kmod-static-nodes makes their device nodes at boot
    "modprobe@dm_mod.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "sys-fs-fuse-connections.mount",
    "getty-static.service",  # gettys on tty2-6 when there is no logind: 3 s of boot
    "dpkg-db-backup.timer",
    "systemd-networkd-persistent-storage.service",  # trixie: networkd state kept on disk
    # network units from ip= on the kernel command line: the image has its own .network file
    "systemd-network-generator.service",
    # trixie: udev rules from credentials (none), and a first pass of the static device nodes
    # that systemd-tmpfiles-setup-dev makes anyway; with the one above, 0.7 s of its boot
    "systemd-udev-load-credentials.service",
    "systemd-tmpfiles-setup-dev-early.service",
)
# Generators systemd runs before it starts anything; these find nothing to do in a test VM
# (no SysV scripts, encrypted or GPT-auto disks, hibernation image, gettys).
MASKED_GENERATORS = (
    "systemd-sysv-generator",
    "systemd-gpt-auto-generator",
    "systemd-cryptsetup-generator",
    "systemd-veritysetup-generator",
    "systemd-integritysetup-generator",
    "systemd-hibernate-resume-generator",
    "systemd-bless-boot-generator",
    "systemd-getty-generator",
    "systemd-system-update-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
)
# The system's own services before the payload (network, devices, journal) run without their
# sandbox: every seccomp filter, namespace and BPF device program is built at each start, and
# under emulation that made networkd alone take 4 s to start. What the cell tests is untouched.
UNSANDBOXED_SERVICES = ("systemd-networkd.service", "systemd-udevd.service", "systemd-journald.service")
NO_SANDBOX_DROPIN = """\
# osgtest-dag: no sandbox for this service in a throw-away test VM (faster boot under emulation)
[Service]
SystemCallFilter=
SystemCallArchitectures=
SystemCallErrorNumber=
RestrictAddressFamilies=
RestrictNamespaces=no
RestrictRealtime=no
RestrictSUIDSGID=no
LockPersonality=no
MemoryDenyWriteExecute=no
ProtectSystem=no
ProtectHome=no
ProtectProc=default
ProtectClock=no
ProtectKernelLogs=no
ProtectKernelModules=no
ProtectKernelTunables=no
ProtectControlGroups=no
ProtectHostname=no
PrivateMounts=no
DeviceAllow=
"""

# udev's coldplug at boot replays an "add" event for every device the kernel knows; in a Debian
# 12 guest 392 of them, of which the payload needs the disks, the NIC and the virtio ports. The
# drop-in leaves out the subsystem and driver objects (157 events) and the device classes below
# (the terminals alone are 71): 129 events, and the payload starts ~1 s sooner under emulation
# on Debian 12 and 13 alike. Their device nodes keep devtmpfs's owner and mode (/dev/ttyS0:
# root 0600, not root:dialout 0660); `udevadm trigger` replays them in a VM that wants them.
COLDPLUG_SKIPPED = (
    "tty",
    "vc",
    "vtconsole",
    "memory",
    "wakeup",
    "workqueue",
    "bdi",
    "event_source",
    "clockevents",
    "container",
)
COLDPLUG_DROPIN = (
    "# osgtest-dag: coldplug only the devices a test VM uses (guest/testvm.py)\n"
    "[Service]\nExecStart=\nExecStart=-udevadm trigger --type=devices --action=add"
    + "".join(f" --subsystem-nomatch={name}" for name in COLDPLUG_SKIPPED)
    + "\n"
)

# Modules udev would load at boot for features of the virtual CPU and machine that a test VM
# does not use: KVM (no VMs inside), CPU frequency scaling, the kernel's accelerated crypto
# (userland crypto does not use it) and a raw serial-mouse driver. Their loading and the crypto
# self-tests took seconds of a TCG boot. Only loading by alias is stopped: `modprobe NAME` and
# anything that asks for the module by name still load it.
UNUSED_MODULES = (
    "kvm",
    "kvm_amd",
    "kvm_intel",
    "powernow_k8",
    "acpi_cpufreq",
    "aesni_intel",
    "ghash_clmulni_intel",
    "polyval_clmulni",
    "sha1_ssse3",
    "sha256_ssse3",
    "sha512_ssse3",
    "crc32_pclmul",
    "crct10dif_pclmul",
    "serio_raw",
)
MODPROBE_CONF = "# osgtest-dag: modules a test VM does not use (guest/testvm.py)\n" + "".join(
    f"blacklist {name}\n" for name in UNUSED_MODULES
)
