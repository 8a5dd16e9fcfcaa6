/*
 * nvidia_smi.c: a stand-in for NVIDIA's nvidia-smi, for the test bench.
 *
 * It loads libnvidia-ml.so.1 with dlopen, exactly as the real tool does, so
 * inside a container it uses the bind-mounted library and on the host the one
 * LD_LIBRARY_PATH names.  It behaves like the real tool where gpuwatchd looks:
 * the texts and exit statuses of failures, `-L`, `-q`, `-pm 0|1`, the status
 * table with no arguments, and a small `--query-gpu=... --format=csv`.
 * Messages go to stdout, as the real tool prints them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    unsigned gpu, memory;
} nvmlUtilization_t;

#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_LIB_RM_VERSION_MISMATCH 18
#define NVML_ERROR_UNKNOWN 999

static struct {
    nvmlReturn_t (*init)(unsigned);
    nvmlReturn_t (*shutdown)(void);
    const char *(*error_string)(nvmlReturn_t);
    nvmlReturn_t (*driver_version)(char *, unsigned);
    nvmlReturn_t (*cuda_version)(int *);
    nvmlReturn_t (*count)(unsigned *);
    nvmlReturn_t (*handle)(unsigned, nvmlDevice_t *);
    nvmlReturn_t (*name)(nvmlDevice_t, char *, unsigned);
    nvmlReturn_t (*uuid)(nvmlDevice_t, char *, unsigned);
    nvmlReturn_t (*serial)(nvmlDevice_t, char *, unsigned);
    nvmlReturn_t (*pci)(nvmlDevice_t, nvmlPciInfo_t *);
    nvmlReturn_t (*minor)(nvmlDevice_t, unsigned *);
    nvmlReturn_t (*get_pm)(nvmlDevice_t, int *);
    nvmlReturn_t (*set_pm)(nvmlDevice_t, int);
    nvmlReturn_t (*memory)(nvmlDevice_t, nvmlMemory_t *);
    nvmlReturn_t (*temperature)(nvmlDevice_t, int, unsigned *);
    nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t *);
} nvml;

/* The real tool's exit statuses: the NVML code where it documents one, else 255. */
static int exit_status(nvmlReturn_t rc) {
    switch (rc) {
    case 2: case 3: case 4: case 6: case 8: case 9: case 10: case 12: case 13: case 14:
    case 15: case 18:
        return rc;
    default:
        return 255;
    }
}

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        printf("NVIDIA-SMI couldn't find %s in libnvidia-ml.so.1.\n", name);
        exit(13);
    }
    return p;
}

static void load_library(void) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!lib) {
        printf("NVIDIA-SMI couldn't find libnvidia-ml.so library in your system. Please make "
               "sure that the NVIDIA Display Driver is properly installed and present in your "
               "system.\nPlease also try adding directory that contains libnvidia-ml.so to your "
               "system PATH.\n");
        exit(12);
    }
    *(void **)&nvml.init = sym(lib, "nvmlInitWithFlags");
    *(void **)&nvml.shutdown = sym(lib, "nvmlShutdown");
    *(void **)&nvml.error_string = sym(lib, "nvmlErrorString");
    *(void **)&nvml.driver_version = sym(lib, "nvmlSystemGetDriverVersion");
    *(void **)&nvml.cuda_version = sym(lib, "nvmlSystemGetCudaDriverVersion");
    *(void **)&nvml.count = sym(lib, "nvmlDeviceGetCount_v2");
    *(void **)&nvml.handle = sym(lib, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&nvml.name = sym(lib, "nvmlDeviceGetName");
    *(void **)&nvml.uuid = sym(lib, "nvmlDeviceGetUUID");
    *(void **)&nvml.serial = sym(lib, "nvmlDeviceGetSerial");
    *(void **)&nvml.pci = sym(lib, "nvmlDeviceGetPciInfo_v3");
    *(void **)&nvml.minor = sym(lib, "nvmlDeviceGetMinorNumber");
    *(void **)&nvml.get_pm = sym(lib, "nvmlDeviceGetPersistenceMode");
    *(void **)&nvml.set_pm = sym(lib, "nvmlDeviceSetPersistenceMode");
    *(void **)&nvml.memory = sym(lib, "nvmlDeviceGetMemoryInfo");
    *(void **)&nvml.temperature = sym(lib, "nvmlDeviceGetTemperature");
    *(void **)&nvml.utilization = sym(lib, "nvmlDeviceGetUtilizationRates");
}

static void init_or_exit(void) {
    nvmlReturn_t rc = nvml.init(0);
    if (rc == 0)
        return;
    if (rc == NVML_ERROR_DRIVER_NOT_LOADED)
        printf("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
               "Make sure that the latest NVIDIA driver is installed and running.\n\n");
    else if (rc == NVML_ERROR_LIB_RM_VERSION_MISMATCH)
        printf("Failed to initialize NVML: Driver/library version mismatch\n");
    else
        printf("Failed to initialize NVML: %s\n", nvml.error_string(rc));
    exit(exit_status(rc));
}

static unsigned count_or_exit(void) {
    unsigned n = 0;
    nvmlReturn_t rc = nvml.count(&n);
    if (rc != 0) {
        printf("Unable to determine the number of GPUs: %s\n", nvml.error_string(rc));
        exit(exit_status(rc));
    }
    return n;
}

static nvmlDevice_t handle_or_exit(unsigned i) {
    nvmlDevice_t h;
    nvmlReturn_t rc = nvml.handle(i, &h);
    if (rc == NVML_ERROR_GPU_IS_LOST) {
        printf("Unable to determine the device handle for GPU%u: 0000:%02X:00.0: GPU is lost.  "
               "Reboot the system to recover this GPU\n", i, i + 1);
        exit(exit_status(rc));
    }
    if (rc != 0) {
        printf("Unable to determine the device handle for GPU%u: %s\n", i, nvml.error_string(rc));
        exit(exit_status(rc));
    }
    return h;
}

/* Fetches a string attribute, or exits with the tool's message. */
static void str_or_exit(nvmlReturn_t (*fn)(nvmlDevice_t, char *, unsigned), nvmlDevice_t h,
                        char *buf, unsigned len, const char *what) {
    nvmlReturn_t rc = fn(h, buf, len);
    if (rc != 0) {
        printf("Unable to get the %s: %s\n", what, nvml.error_string(rc));
        exit(exit_status(rc));
    }
}

struct gpu_info {
    char name[96], uuid[96], serial[32], bus[32];
    int pm;
    unsigned minor, temperature;
    nvmlMemory_t mem;
    nvmlUtilization_t util;
};

static void gpu_info_or_exit(unsigned i, struct gpu_info *g) {
    nvmlDevice_t h = handle_or_exit(i);
    nvmlPciInfo_t pci;
    nvmlReturn_t rc;
    memset(g, 0, sizeof(*g));
    str_or_exit(nvml.name, h, g->name, sizeof g->name, "name");
    str_or_exit(nvml.uuid, h, g->uuid, sizeof g->uuid, "UUID");
    str_or_exit(nvml.serial, h, g->serial, sizeof g->serial, "serial number");
    if ((rc = nvml.pci(h, &pci)) != 0 || (rc = nvml.get_pm(h, &g->pm)) != 0 ||
        (rc = nvml.minor(h, &g->minor)) != 0 || (rc = nvml.memory(h, &g->mem)) != 0 ||
        (rc = nvml.temperature(h, 0, &g->temperature)) != 0 ||
        (rc = nvml.utilization(h, &g->util)) != 0) {
        printf("Unable to query GPU%u: %s\n", i, nvml.error_string(rc));
        exit(exit_status(rc));
    }
    snprintf(g->bus, sizeof g->bus, "%s", pci.busId);
}

static void versions(char *driver, size_t dlen, char *cuda, size_t clen) {
    int cv = 0;
    if (nvml.driver_version(driver, (unsigned)dlen) != 0)
        snprintf(driver, dlen, "N/A");
    if (nvml.cuda_version(&cv) == 0)
        snprintf(cuda, clen, "%d.%d", cv / 1000, (cv % 1000) / 10);
    else
        snprintf(cuda, clen, "N/A");
}

static void timestamp(char *buf, size_t len) {
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(buf, len, "%a %b %e %H:%M:%S %Y", &tm);
}

static int cmd_status(void) {
    char driver[80], cuda[16], ts[64];
    unsigned n = count_or_exit();
    versions(driver, sizeof driver, cuda, sizeof cuda);
    timestamp(ts, sizeof ts);
    const char *rule = "+---------------------------------------------------------------------------------------+";
    const char *sep3 = "+-----------------------------------------+----------------------+----------------------+";
    printf("%s       \n%s\n", ts, rule);
    printf("| NVIDIA-SMI %-21s Driver Version: %-13s CUDA Version: %-8s |\n", driver, driver,
           cuda);
    printf("|-----------------------------------------+----------------------+----------------------+\n");
    printf("| GPU  Name                 Persistence-M | Bus-Id        Disp.A | Volatile Uncorr. ECC |\n");
    printf("| Fan  Temp   Perf          Pwr:Usage/Cap |         Memory-Usage | GPU-Util  Compute M. |\n");
    printf("|=========================================+======================+======================|\n");
    for (unsigned i = 0; i < n; i++) {
        struct gpu_info g;
        gpu_info_or_exit(i, &g);
        printf("| %3u  %-30.30s %3s | %-16s Off | %20s |\n", i, g.name, g.pm ? "On" : "Off",
               g.bus, "N/A");
        printf("| 23%%   %2uC    P8              11W / 250W | %5lluMiB / %6lluMiB | %6u%%      Default |\n",
               g.temperature, g.mem.used >> 20, g.mem.total >> 20, g.util.gpu);
        printf("%s\n", sep3);
    }
    printf("\n%s\n", rule);
    printf("| Processes:                                                                            |\n");
    printf("|  GPU   GI   CI        PID   Type   Process name                            GPU Memory |\n");
    printf("|        ID   ID                                                             Usage      |\n");
    printf("|=======================================================================================|\n");
    printf("|  No running processes found                                                           |\n");
    printf("%s\n", rule);
    return 0;
}

static int cmd_list(void) {
    unsigned n = count_or_exit();
    for (unsigned i = 0; i < n; i++) {
        nvmlDevice_t h = handle_or_exit(i);
        char name[96], uuid[96];
        str_or_exit(nvml.name, h, name, sizeof name, "name");
        str_or_exit(nvml.uuid, h, uuid, sizeof uuid, "UUID");
        printf("GPU %u: %s (UUID: %s)\n", i, name, uuid);
    }
    return 0;
}

static int selected(int only, unsigned i) { return only < 0 || (unsigned)only == i; }

static int cmd_query(int only) {
    char driver[80], cuda[16], ts[64];
    unsigned n = count_or_exit();
    versions(driver, sizeof driver, cuda, sizeof cuda);
    timestamp(ts, sizeof ts);
    printf("\n==============NVSMI LOG==============\n\n");
    printf("Timestamp                                 : %s\n", ts);
    printf("Driver Version                            : %s\n", driver);
    printf("CUDA Version                              : %s\n\n", cuda);
    printf("Attached GPUs                             : %u\n", n);
    for (unsigned i = 0; i < n; i++) {
        if (!selected(only, i))
            continue;
        struct gpu_info g;
        gpu_info_or_exit(i, &g);
        printf("GPU %s\n", g.bus);
        printf("    Product Name                          : %s\n", g.name);
        printf("    Persistence Mode                      : %s\n", g.pm ? "Enabled" : "Disabled");
        printf("    Serial Number                         : %s\n", g.serial);
        printf("    GPU UUID                              : %s\n", g.uuid);
        printf("    Minor Number                          : %u\n", g.minor);
        printf("    FB Memory Usage\n");
        printf("        Total                             : %llu MiB\n", g.mem.total >> 20);
        printf("        Used                              : %llu MiB\n", g.mem.used >> 20);
        printf("        Free                              : %llu MiB\n", g.mem.free >> 20);
        printf("    Utilization\n");
        printf("        Gpu                               : %u %%\n", g.util.gpu);
        printf("        Memory                            : %u %%\n", g.util.memory);
        printf("    Temperature\n");
        printf("        GPU Current Temp                  : %u C\n\n", g.temperature);
    }
    return 0;
}

static int cmd_persistence(int only, int mode) {
    unsigned n = count_or_exit();
    for (unsigned i = 0; i < n; i++) {
        if (!selected(only, i))
            continue;
        struct gpu_info g;
        gpu_info_or_exit(i, &g);
        if (g.pm == mode) {
            printf("Persistence mode is already %s for GPU %s.\n", mode ? "Enabled" : "Disabled",
                   g.bus);
            continue;
        }
        nvmlReturn_t rc = nvml.set_pm(handle_or_exit(i), mode);
        if (rc != 0) {
            printf("Unable to set persistence mode for GPU %s: %s\n", g.bus,
                   nvml.error_string(rc));
            printf("Terminating early due to previous errors.\n");
            return exit_status(rc);
        }
        printf("%s persistence mode for GPU %s.\n", mode ? "Enabled" : "Disabled", g.bus);
    }
    printf("All done.\n");
    return 0;
}

/* --query-gpu=a,b,c --format=csv[,noheader]: the fields gpuwatchd might ask for. */
static int cmd_query_gpu(int only, const char *fields, int header) {
    unsigned n = count_or_exit();
    char driver[80], cuda[16];
    versions(driver, sizeof driver, cuda, sizeof cuda);
    char buf[512];
    if (header) {
        snprintf(buf, sizeof buf, "%s", fields);
        int first = 1;
        for (char *save = NULL, *f = strtok_r(buf, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
            printf("%s%s", first ? "" : ", ", f);
            first = 0;
        }
        printf("\n");
    }
    for (unsigned i = 0; i < n; i++) {
        if (!selected(only, i))
            continue;
        struct gpu_info g;
        gpu_info_or_exit(i, &g);
        snprintf(buf, sizeof buf, "%s", fields);
        int first = 1;
        for (char *save = NULL, *f = strtok_r(buf, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
            printf("%s", first ? "" : ", ");
            first = 0;
            if (!strcmp(f, "index")) printf("%u", i);
            else if (!strcmp(f, "name")) printf("%s", g.name);
            else if (!strcmp(f, "uuid")) printf("%s", g.uuid);
            else if (!strcmp(f, "serial")) printf("%s", g.serial);
            else if (!strcmp(f, "pci.bus_id")) printf("%s", g.bus);
            else if (!strcmp(f, "persistence_mode")) printf("%s", g.pm ? "Enabled" : "Disabled");
            else if (!strcmp(f, "driver_version")) printf("%s", driver);
            else if (!strcmp(f, "temperature.gpu")) printf("%u", g.temperature);
            else if (!strcmp(f, "memory.total")) printf("%llu MiB", g.mem.total >> 20);
            else if (!strcmp(f, "memory.used")) printf("%llu MiB", g.mem.used >> 20);
            else if (!strcmp(f, "utilization.gpu")) printf("%u %%", g.util.gpu);
            else {
                printf("\nField \"%s\" is not a valid field to query.\n", f);
                return 2;
            }
        }
        printf("\n");
    }
    return 0;
}

static int usage_error(void) {
    printf("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n\n");
    return 2;
}

int main(int argc, char **argv) {
    enum { STATUS, LIST, QUERY, PM, QUERY_GPU, HELP } cmd = STATUS;
    int only = -1, mode = -1, header = 1, have_format = 0;
    const char *fields = NULL;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "-L") || !strcmp(arg, "--list-gpus")) cmd = LIST;
        else if (!strcmp(arg, "-q") || !strcmp(arg, "--query")) cmd = QUERY;
        else if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) cmd = HELP;
        else if ((!strcmp(arg, "-i") || !strcmp(arg, "--id")) && a + 1 < argc) only = atoi(argv[++a]);
        else if (!strncmp(arg, "--id=", 5)) only = atoi(arg + 5);
        else if (!strcmp(arg, "-pm") && a + 1 < argc) { cmd = PM; mode = atoi(argv[++a]); }
        else if (!strncmp(arg, "--persistence-mode=", 19)) { cmd = PM; mode = atoi(arg + 19); }
        else if (!strncmp(arg, "--query-gpu=", 12)) { cmd = QUERY_GPU; fields = arg + 12; }
        else if (!strncmp(arg, "--format=", 9)) {
            have_format = !strncmp(arg + 9, "csv", 3);
            header = strstr(arg + 9, "noheader") == NULL;
        } else
            return usage_error();
    }
    if (cmd == HELP) {
        printf("NVIDIA System Management Interface -- v535.274.02 (test bench stand-in)\n\n"
               "    -L, --list-gpus       Display a list of GPUs connected to the system.\n"
               "    -q, --query           Display GPU or Unit info.\n"
               "    -i, --id=             Target a specific GPU.\n"
               "    -pm, --persistence-mode=  Set persistence mode: 0/DISABLED, 1/ENABLED\n"
               "    --query-gpu=  --format=csv[,noheader]\n");
        return 0;
    }
    if ((cmd == PM && mode != 0 && mode != 1) || (cmd == QUERY_GPU && !have_format))
        return usage_error();
    load_library();
    init_or_exit();
    int rc;
    switch (cmd) {
    case LIST: rc = cmd_list(); break;
    case QUERY: rc = cmd_query(only); break;
    case PM: rc = cmd_persistence(only, mode); break;
    case QUERY_GPU: rc = cmd_query_gpu(only, fields, header); break;
    default: rc = cmd_status(); break;
    }
    nvml.shutdown();
    return rc;
}
