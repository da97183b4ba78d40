#!/usr/bin/awk -f
# osgtest-dag: LIBVIRT_XML_SCRIPT for the test pool (from HTCondor's libvirt_simple_script.awk).
# usage: awk -f osgtest-libvirt.awk [tcg|kvm] [console-dir]
function quote(str) {
    gsub(/&/, "\\&amp;", str); gsub(/</, "\\&lt;", str); gsub(/>/, "\\&gt;", str)
    gsub(/'/, "\\&apos;", str); gsub(/"/, "\\&quot;", str)
    return str
}
function unquote(str) {
    sub(/^[ \t]*"/, "", str); sub(/"[ \t]*$/, "", str)
    return str
}
BEGIN {
    accel = (ARGC > 1) ? ARGV[1] : "tcg"
    consoledir = (ARGC > 2) ? ARGV[2] : "/var/log/condor/vm-consoles"
    ARGC = 1
    FS = " = "
    networking = "false"; vcpus = 1; memory = 512; bootloader = ""; disk = ""
    kernel = ""; initrd = ""; root = ""; kernel_params = ""; name = ""; macaddr = ""; workdir = ""
}
$1 ~ /^VMPARAM_VM_NAME$/ { name = unquote($2); next }
$1 ~ /^JobVMMemory$/ { memory = $2 * 1024; next }
$1 ~ /^JobVM_VCPUS$/ { vcpus = $2; next }
$1 ~ /^JobVMNetworking$/ { networking = tolower($2); next }
$1 ~ /^JobVM_MACADDR$/ { macaddr = unquote($2); next }
$1 ~ /^VMPARAM_Kvm_Kernel$/ { kernel = unquote($2); next }
$1 ~ /^VMPARAM_Kvm_Initrd$/ { initrd = unquote($2); next }
$1 ~ /^VMPARAM_Kvm_Root$/ { root = unquote($2); next }
$1 ~ /^VMPARAM_Kvm_Kernel_Params$/ { kernel_params = unquote($2); next }
$1 ~ /^VMPARAM_vm_Disk$/ { disk = unquote($2); next }
$1 ~ /^VM_WORKING_DIR$/ { workdir = unquote($2); next }
END {
    if (accel == "kvm") {
        print "<domain type='kvm'>"
    } else {
        print "<domain type='qemu'>"
    }
    print "<name>" quote(name) "</name>"
    print "<memory>" memory "</memory>"
    print "<vcpu>" vcpus "</vcpu>"
    if (accel == "kvm") {
        print "<cpu mode='host-passthrough'/>"
    } else {
        print "<cpu mode='maximum'/>"
    }
    print "<os><type arch='x86_64' machine='q35'>hvm</type>"
    if (kernel != "") {
        print "<kernel>" quote(kernel) "</kernel>"
        if (initrd != "") print "<initrd>" quote(initrd) "</initrd>"
        if (root != "" || kernel_params != "") print "<cmdline>root=" quote(root) " " quote(kernel_params) "</cmdline>"
    }
    print "<boot dev='hd'/></os>"
    print "<features><acpi/><apic/></features>"
    print "<clock offset='utc'/>"
    print "<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>"
    print "<devices>"
    n = split(disk, disks, " *, *")
    for (i = 1; i <= n; i++) {
        m = split(disks[i], f, ":")
        # relative disk names are files in the job's working directory (as the stock script)
        if (substr(f[1], 1, 1) != "/" && workdir != "") f[1] = workdir "/" f[1]
        fmt = (m >= 4 && f[4] != "") ? f[4] : "raw"
        ro = (f[3] == "r") ? "<readonly/>" : ""
        print "<disk type='file' device='disk'><driver name='qemu' type='" quote(fmt) "'/>"
        print "<source file='" quote(f[1]) "'/><target dev='" quote(f[2]) "' bus='virtio'/>" ro "</disk>"
    }
    if (networking == "true") {
        print "<interface type='user'>"
        if (macaddr != "") print "<mac address='" quote(macaddr) "'/>"
        print "<model type='virtio'/></interface>"
    }
    print "<serial type='file'><source path='" quote(consoledir "/" name ".log") "'/><target port='0'/></serial>"
    print "<console type='file'><source path='" quote(consoledir "/" name ".log") "'/><target type='serial' port='0'/></console>"
    print "</devices></domain>"
}
