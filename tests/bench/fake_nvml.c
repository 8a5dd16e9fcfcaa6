/*
 * fake_nvml.c: a stand-in for NVIDIA's libnvidia-ml.so.1, for the test bench.
 *
 * The real pynvml loads it through LD_LIBRARY_PATH (or the bind mount at
 * /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 inside containers), so every
 * line of pynvml runs for real; only the driver behind it is simulated.
 *
 * The simulated world lives in a text state file ($FAKE_NVML_STATE, lines of
 * "key=value") that is re-read on every call, so a test can change the world
 * while the daemon under test runs.  Keys (all optional, defaults in brackets):
 *
 *   gpu_count [1]          number of GPUs (at most FAKE_MAX_GPUS)
 *   driver_loaded [1]      0: every call answers NVML_ERROR_DRIVER_NOT_LOADED (9)
 *   version_mismatch [0]   1: every call answers NVML_ERROR_LIB_RM_VERSION_MISMATCH (18)
 *   gpu_lost [0]           1: device handles and queries answer NVML_ERROR_GPU_IS_LOST (15)
 *   set_permitted [1]      0: nvmlDeviceSetPersistenceMode answers NO_PERMISSION (4)
 *   forced_error [0]       non-zero: nvmlInit* answers this code
 *   session [1]            the driver session; "idling the driver" bumps it
 *   probe_hang [0]         1: nvmlInit* never returns inside containers
 *   init_delay_ms [0]      nvmlInit* sleeps this long first
 *   driver_version, nvml_version, cuda_version
 *   name.N uuid.N serial.N persistence.N memory_total_mib.N memory_used_mib.N
 *   temperature.N util_gpu.N util_memory.N
 *
 * Failure models (see README, "Test bench"):
 *   - Driver session: a container's entrypoint copies "session" into
 *     $FAKE_NVML_SESSION_FILE (on a tmpfs, so a restart records it afresh).
 *     When that recorded session differs from the current one, every call
 *     answers NVML_ERROR_UNKNOWN (999).  The host has no session file and is
 *     never affected, as on a real host.
 *   - Device access: init opens the NVIDIA control node ($FAKE_NVML_DEVICE,
 *     default /dev/nvidiactl).  No real driver is behind it, so a permitted
 *     open fails with ENXIO, which counts as present; EPERM (the cgroup's
 *     devices.deny refused it) answers NVML_ERROR_UNKNOWN.  A missing node is
 *     not checked (host processes).
 *
 * Set-persistence rewrites the state file atomically (temp file + rename in
 * the same directory, under an flock on "<dir>/.lock"), and answers
 * NVML_ERROR_NO_PERMISSION when not permitted or when the directory is not
 * writable (read-only bind mount inside containers).
 *
 * When $FAKE_NVML_CALL_LOG is set, each call (except nvmlErrorString) appends
 * one line: "<unix time>\t<pid>\t<hostname>\t<function>\t<k=v args>\t<rc>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_UNKNOWN = 999,
};

#define FAKE_MAX_GPUS 16
#define STR_LEN 96
#define MAX_STATE_BYTES 16384

struct fake_gpu {
    char name[STR_LEN];
    char uuid[STR_LEN];
    char serial[STR_LEN];
    int persistence;
    unsigned long long memory_total_mib;
    unsigned long long memory_used_mib;
    unsigned temperature;
    unsigned util_gpu;
    unsigned util_memory;
};

struct fake_state {
    unsigned gpu_count;
    int driver_loaded;
    int version_mismatch;
    int gpu_lost;
    int set_permitted;
    int forced_error;
    long session;
    int probe_hang;
    long init_delay_ms;
    char driver_version[STR_LEN];
    char nvml_version[STR_LEN];
    int cuda_version;
    struct fake_gpu gpus[FAKE_MAX_GPUS];
    /* Raw lines, kept so a rewrite preserves keys this library ignores. */
    char raw[MAX_STATE_BYTES];
};

/* The opaque handle pynvml passes back: a pointer into this table. */
struct nvmlDevice_st {
    unsigned index;
};
typedef struct nvmlDevice_st *nvmlDevice_t;
static struct nvmlDevice_st devices[FAKE_MAX_GPUS];

typedef struct {
    char busIdLegacy[16];
    unsigned domain;
    unsigned bus;
    unsigned device;
    unsigned pciDeviceId;
    unsigned pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned version;
    int sensorType;
    int temperature;
} nvmlTemperature_v1_t;

/* nvmlInit* successes minus nvmlShutdown calls; pynvml callers use threads. */
static int init_count;

/* ---- state file ------------------------------------------------------- */

static void default_state(struct fake_state *st) {
    memset(st, 0, sizeof(*st));
    st->gpu_count = 1;
    st->driver_loaded = 1;
    st->set_permitted = 1;
    st->session = 1;
    snprintf(st->driver_version, STR_LEN, "535.274.02");
    snprintf(st->nvml_version, STR_LEN, "12.535.274.02");
    st->cuda_version = 12020;
    for (unsigned i = 0; i < FAKE_MAX_GPUS; i++) {
        struct fake_gpu *g = &st->gpus[i];
        snprintf(g->name, STR_LEN, "NVIDIA GeForce GTX 1080 Ti");
        snprintf(g->uuid, STR_LEN, "GPU-3c8e2f14-9a1b-4d7e-8f21-%012x", i);
        snprintf(g->serial, STR_LEN, "0320117012%03u", i);
        g->memory_total_mib = 11264;
        g->memory_used_mib = 2;
        g->temperature = 34;
    }
}

static const char *state_path(void) {
    const char *p = getenv("FAKE_NVML_STATE");
    return (p && *p) ? p : NULL;
}

static int parse_gpu_key(const char *key, const char *prefix, unsigned *index) {
    size_t n = strlen(prefix);
    if (strncmp(key, prefix, n) != 0 || key[n] != '.')
        return 0;
    char *end;
    unsigned long i = strtoul(key + n + 1, &end, 10);
    if (*end != '\0' || i >= FAKE_MAX_GPUS)
        return 0;
    *index = (unsigned)i;
    return 1;
}

static void apply_line(struct fake_state *st, char *line) {
    char *eq = strchr(line, '=');
    if (!eq || line[0] == '#')
        return;
    *eq = '\0';
    const char *k = line, *v = eq + 1;
    unsigned i;
    if (!strcmp(k, "gpu_count")) {
        unsigned long n = strtoul(v, NULL, 10);
        st->gpu_count = n > FAKE_MAX_GPUS ? FAKE_MAX_GPUS : (unsigned)n;
    } else if (!strcmp(k, "driver_loaded")) st->driver_loaded = atoi(v);
    else if (!strcmp(k, "version_mismatch")) st->version_mismatch = atoi(v);
    else if (!strcmp(k, "gpu_lost")) st->gpu_lost = atoi(v);
    else if (!strcmp(k, "set_permitted")) st->set_permitted = atoi(v);
    else if (!strcmp(k, "forced_error")) st->forced_error = atoi(v);
    else if (!strcmp(k, "session")) st->session = atol(v);
    else if (!strcmp(k, "probe_hang")) st->probe_hang = atoi(v);
    else if (!strcmp(k, "init_delay_ms")) st->init_delay_ms = atol(v);
    else if (!strcmp(k, "driver_version")) snprintf(st->driver_version, STR_LEN, "%s", v);
    else if (!strcmp(k, "nvml_version")) snprintf(st->nvml_version, STR_LEN, "%s", v);
    else if (!strcmp(k, "cuda_version")) st->cuda_version = atoi(v);
    else if (parse_gpu_key(k, "name", &i)) snprintf(st->gpus[i].name, STR_LEN, "%s", v);
    else if (parse_gpu_key(k, "uuid", &i)) snprintf(st->gpus[i].uuid, STR_LEN, "%s", v);
    else if (parse_gpu_key(k, "serial", &i)) snprintf(st->gpus[i].serial, STR_LEN, "%s", v);
    else if (parse_gpu_key(k, "persistence", &i)) st->gpus[i].persistence = atoi(v) != 0;
    else if (parse_gpu_key(k, "memory_total_mib", &i)) st->gpus[i].memory_total_mib = strtoull(v, NULL, 10);
    else if (parse_gpu_key(k, "memory_used_mib", &i)) st->gpus[i].memory_used_mib = strtoull(v, NULL, 10);
    else if (parse_gpu_key(k, "temperature", &i)) st->gpus[i].temperature = (unsigned)atoi(v);
    else if (parse_gpu_key(k, "util_gpu", &i)) st->gpus[i].util_gpu = (unsigned)atoi(v);
    else if (parse_gpu_key(k, "util_memory", &i)) st->gpus[i].util_memory = (unsigned)atoi(v);
}

/* Loads the state.  Returns 0, or -1 when a named state file cannot be read
 * (treated as "no driver": the bench is broken, and it must show). */
static int load_state(struct fake_state *st) {
    default_state(st);
    const char *path = state_path();
    if (!path)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, st->raw, sizeof(st->raw) - 1);
    close(fd);
    if (n < 0)
        return -1;
    st->raw[n] = '\0';
    char copy[MAX_STATE_BYTES];
    memcpy(copy, st->raw, (size_t)n + 1);
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        apply_line(st, line);
    return 0;
}

/* Sets "key=value" in the state file atomically.  Returns an nvmlReturn_t. */
static nvmlReturn_t state_set(const char *key, const char *value) {
    const char *path = state_path();
    if (!path)
        return NVML_ERROR_NO_PERMISSION;
    char dir[PATH_MAX], lock[PATH_MAX + 16], tmp[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    snprintf(lock, sizeof lock, "%s/.lock", dir);
    snprintf(tmp, sizeof tmp, "%s/.state.%d.tmp", dir, (int)getpid());

    /* A read-only mount (containers) refuses the lock: no permission, as an
     * unprivileged caller gets from the real driver. */
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lfd < 0)
        return NVML_ERROR_NO_PERMISSION;
    flock(lfd, LOCK_EX);

    struct fake_state st;
    nvmlReturn_t rc = NVML_SUCCESS;
    if (load_state(&st) != 0) {
        rc = NVML_ERROR_UNKNOWN;
        goto out;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        rc = NVML_ERROR_NO_PERMISSION;
        goto out;
    }
    size_t klen = strlen(key);
    int found = 0;
    char *save = NULL;
    for (char *line = strtok_r(st.raw, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, key, klen) && line[klen] == '=') {
            fprintf(f, "%s=%s\n", key, value);
            found = 1;
        } else {
            fprintf(f, "%s\n", line);
        }
    }
    if (!found)
        fprintf(f, "%s=%s\n", key, value);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        rc = NVML_ERROR_UNKNOWN;
    }
out:
    flock(lfd, LOCK_UN);
    close(lfd);
    return rc;
}

/* ---- call log --------------------------------------------------------- */

static nvmlReturn_t logged(nvmlReturn_t rc, const char *fn, const char *fmt, ...) {
    const char *path = getenv("FAKE_NVML_CALL_LOG");
    if (!path || !*path)
        return rc;
    char args[256] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(args, sizeof args, fmt, ap);
        va_end(ap);
    }
    struct utsname u;
    if (uname(&u) != 0)
        snprintf(u.nodename, sizeof u.nodename, "?");
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char line[512];
    int n = snprintf(line, sizeof line, "%ld.%06ld\t%d\t%s\t%s\t%s\t%d\n", (long)tv.tv_sec,
                     (long)tv.tv_usec, (int)getpid(), u.nodename, fn, args, rc);
    /* One write() with O_APPEND: concurrent writers never interleave a line. */
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, line, (size_t)n) < 0) { /* the log is best effort */ }
        close(fd);
    }
    return rc;
}

/* ---- checks shared by every call -------------------------------------- */

/* Errors that the whole driver answers, whatever the call. */
static nvmlReturn_t driver_status(const struct fake_state *st, int loaded) {
    if (loaded != 0 || !st->driver_loaded)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    if (st->version_mismatch)
        return NVML_ERROR_LIB_RM_VERSION_MISMATCH;
    const char *sf = getenv("FAKE_NVML_SESSION_FILE");
    if (sf && *sf) {
        FILE *f = fopen(sf, "r");
        if (f) {
            long recorded;
            int ok = fscanf(f, "%ld", &recorded) == 1;
            fclose(f);
            /* The session this container was started in has ended. */
            if (ok && recorded != st->session)
                return NVML_ERROR_UNKNOWN;
        }
    }
    return NVML_SUCCESS;
}

static int in_container_session(void) {
    const char *sf = getenv("FAKE_NVML_SESSION_FILE");
    return sf && *sf && access(sf, F_OK) == 0;
}

/* Loads the state and answers the status an ordinary call starts from. */
static nvmlReturn_t begin(struct fake_state *st) {
    int loaded = load_state(st);
    if (__atomic_load_n(&init_count, __ATOMIC_SEQ_CST) <= 0)
        return NVML_ERROR_UNINITIALIZED;
    return driver_status(st, loaded);
}

static nvmlReturn_t device_index(const struct fake_state *st, nvmlDevice_t h, unsigned *index) {
    if (h < &devices[0] || h >= &devices[FAKE_MAX_GPUS] || h->index >= st->gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (st->gpu_lost)
        return NVML_ERROR_GPU_IS_LOST;
    *index = h->index;
    return NVML_SUCCESS;
}

static long handle_arg(nvmlDevice_t h) {
    if (h >= &devices[0] && h < &devices[FAKE_MAX_GPUS])
        return (long)h->index;
    return -1;
}

static nvmlReturn_t copy_string(char *dst, unsigned len, const char *src) {
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

/* ---- init / shutdown / errors ----------------------------------------- */

static nvmlReturn_t do_init(void) {
    struct fake_state st;
    int loaded = load_state(&st);
    if (st.init_delay_ms > 0) {
        struct timespec ts = {st.init_delay_ms / 1000, (st.init_delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    /* A hung driver inside containers: the in-container probe never returns.
     * The bench workload sets FAKE_NVML_NO_HANG so its own log keeps going. */
    if (loaded == 0 && st.probe_hang && in_container_session() && !getenv("FAKE_NVML_NO_HANG"))
        for (;;)
            pause();
    nvmlReturn_t rc = driver_status(&st, loaded);
    if (rc != NVML_SUCCESS)
        return rc;
    if (st.forced_error)
        return st.forced_error;
    const char *node = getenv("FAKE_NVML_DEVICE");
    if (!node || !*node)
        node = "/dev/nvidiactl";
    int fd = open(node, O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
    } else if (errno == EPERM || errno == EACCES) {
        /* The device cgroup refused the node: what NVML reports as unknown. */
        return NVML_ERROR_UNKNOWN;
    } /* ENXIO: node present, no real driver behind it.  ENOENT: not simulated. */
    __atomic_add_fetch(&init_count, 1, __ATOMIC_SEQ_CST);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    return logged(do_init(), "nvmlInitWithFlags", "flags=%u", flags);
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return logged(do_init(), "nvmlInit_v2", NULL); }

EXPORT nvmlReturn_t nvmlInit(void) { return logged(do_init(), "nvmlInit", NULL); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t rc = NVML_SUCCESS;
    if (__atomic_sub_fetch(&init_count, 1, __ATOMIC_SEQ_CST) < 0) {
        __atomic_add_fetch(&init_count, 1, __ATOMIC_SEQ_CST);
        rc = NVML_ERROR_UNINITIALIZED;
    }
    return logged(rc, "nvmlShutdown", NULL);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t rc) {
    switch (rc) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 999: return "Unknown Error";
    default: return "Unknown Error";
    }
}

/* ---- system queries ---------------------------------------------------- */

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned length) {
    struct fake_state st;
    nvmlReturn_t rc = begin(&st);
    if (rc == NVML_SUCCESS)
        rc = copy_string(version, length, st.driver_version);
    return logged(rc, "nvmlSystemGetDriverVersion", NULL);
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned length) {
    /* Answers without init, as the real library does. */
    struct fake_state st;
    load_state(&st);
    return logged(copy_string(version, length, st.nvml_version), "nvmlSystemGetNVMLVersion", NULL);
}

static nvmlReturn_t cuda_version(int *v) {
    struct fake_state st;
    nvmlReturn_t rc = begin(&st);
    if (rc == NVML_SUCCESS && !v)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *v = st.cuda_version;
    return rc;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    return logged(cuda_version(v), "nvmlSystemGetCudaDriverVersion", NULL);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) {
    return logged(cuda_version(v), "nvmlSystemGetCudaDriverVersion_v2", NULL);
}

/* ---- device enumeration ------------------------------------------------ */

static nvmlReturn_t device_count(unsigned *count) {
    struct fake_state st;
    nvmlReturn_t rc = begin(&st);
    if (rc == NVML_SUCCESS && !count)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *count = st.gpu_count;
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned *count) {
    return logged(device_count(count), "nvmlDeviceGetCount", NULL);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *count) {
    return logged(device_count(count), "nvmlDeviceGetCount_v2", NULL);
}

static nvmlReturn_t handle_by_index(unsigned index, nvmlDevice_t *device) {
    struct fake_state st;
    nvmlReturn_t rc = begin(&st);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!device || index >= st.gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (st.gpu_lost)
        return NVML_ERROR_GPU_IS_LOST;
    devices[index].index = index;
    *device = &devices[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, nvmlDevice_t *device) {
    return logged(handle_by_index(index, device), "nvmlDeviceGetHandleByIndex_v2", "index=%u", index);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned index, nvmlDevice_t *device) {
    return logged(handle_by_index(index, device), "nvmlDeviceGetHandleByIndex", "index=%u", index);
}

static void bus_id(unsigned index, char *out, size_t len, int legacy) {
    snprintf(out, len, legacy ? "0000:%02X:00.0" : "00000000:%02X:00.0", (index + 1) & 0xFFu);
}

/* Finds a device by a per-GPU string; `which` 0: UUID, 1: PCI bus id. */
static nvmlReturn_t handle_by(const char *key, int which, nvmlDevice_t *device) {
    struct fake_state st;
    nvmlReturn_t rc = begin(&st);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!key || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned i = 0; i < st.gpu_count; i++) {
        char id[32];
        bus_id(i, id, sizeof id, 0);
        int match = which == 0 ? !strcmp(key, st.gpus[i].uuid)
                               : (!strcasecmp(key, id) || !strcasecmp(key, id + 4));
        if (match) {
            if (st.gpu_lost)
                return NVML_ERROR_GPU_IS_LOST;
            devices[i].index = i;
            *device = &devices[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    return logged(handle_by(uuid, 0, device), "nvmlDeviceGetHandleByUUID", "uuid=%s",
                  uuid ? uuid : "");
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *id, nvmlDevice_t *device) {
    return logged(handle_by(id, 1, device), "nvmlDeviceGetHandleByPciBusId_v2", "bus_id=%s",
                  id ? id : "");
}

/* ---- per-device queries ------------------------------------------------ */

/* Declares `st` and `i` for a device query, returning early on error. */
#define DEVICE_QUERY(fn, h)                                                       \
    struct fake_state st;                                                         \
    unsigned i = 0;                                                               \
    nvmlReturn_t rc = begin(&st);                                                 \
    if (rc == NVML_SUCCESS)                                                       \
        rc = device_index(&st, (h), &i);                                          \
    if (rc != NVML_SUCCESS)                                                       \
        return logged(rc, fn, "index=%ld", handle_arg(h))

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t h, unsigned *index) {
    DEVICE_QUERY("nvmlDeviceGetIndex", h);
    if (!index)
        return logged(NVML_ERROR_INVALID_ARGUMENT, "nvmlDeviceGetIndex", "index=%u", i);
    *index = i;
    return logged(NVML_SUCCESS, "nvmlDeviceGetIndex", "index=%u", i);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t h, char *name, unsigned length) {
    DEVICE_QUERY("nvmlDeviceGetName", h);
    return logged(copy_string(name, length, st.gpus[i].name), "nvmlDeviceGetName", "index=%u", i);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *uuid, unsigned length) {
    DEVICE_QUERY("nvmlDeviceGetUUID", h);
    return logged(copy_string(uuid, length, st.gpus[i].uuid), "nvmlDeviceGetUUID", "index=%u", i);
}

EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t h, char *serial, unsigned length) {
    DEVICE_QUERY("nvmlDeviceGetSerial", h);
    return logged(copy_string(serial, length, st.gpus[i].serial), "nvmlDeviceGetSerial",
                  "index=%u", i);
}

EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t h, unsigned *minor) {
    DEVICE_QUERY("nvmlDeviceGetMinorNumber", h);
    if (!minor)
        return logged(NVML_ERROR_INVALID_ARGUMENT, "nvmlDeviceGetMinorNumber", "index=%u", i);
    *minor = i;
    return logged(NVML_SUCCESS, "nvmlDeviceGetMinorNumber", "index=%u", i);
}

static nvmlReturn_t pci_info(const char *fn, nvmlDevice_t h, nvmlPciInfo_t *pci) {
    DEVICE_QUERY(fn, h);
    if (!pci)
        return logged(NVML_ERROR_INVALID_ARGUMENT, fn, "index=%u", i);
    memset(pci, 0, sizeof(*pci));
    bus_id(i, pci->busIdLegacy, sizeof pci->busIdLegacy, 1);
    bus_id(i, pci->busId, sizeof pci->busId, 0);
    pci->domain = 0;
    pci->bus = i + 1;
    pci->device = 0;
    pci->pciDeviceId = 0x1B0610DE; /* GP102 [GeForce GTX 1080 Ti] */
    pci->pciSubSystemId = 0x120F10DE;
    return logged(NVML_SUCCESS, fn, "index=%u", i);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t h, nvmlPciInfo_t *pci) {
    return pci_info("nvmlDeviceGetPciInfo_v3", h, pci);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t h, nvmlPciInfo_t *pci) {
    return pci_info("nvmlDeviceGetPciInfo_v2", h, pci);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t h, nvmlPciInfo_t *pci) {
    return pci_info("nvmlDeviceGetPciInfo", h, pci);
}

EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t h, int *mode) {
    DEVICE_QUERY("nvmlDeviceGetPersistenceMode", h);
    if (!mode)
        return logged(NVML_ERROR_INVALID_ARGUMENT, "nvmlDeviceGetPersistenceMode", "index=%u", i);
    *mode = st.gpus[i].persistence;
    return logged(NVML_SUCCESS, "nvmlDeviceGetPersistenceMode", "index=%u", i);
}

EXPORT nvmlReturn_t nvmlDeviceSetPersistenceMode(nvmlDevice_t h, int mode) {
    DEVICE_QUERY("nvmlDeviceSetPersistenceMode", h);
    if (mode != 0 && mode != 1)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (!st.set_permitted)
        rc = NVML_ERROR_NO_PERMISSION;
    else {
        char key[32];
        snprintf(key, sizeof key, "persistence.%u", i);
        rc = state_set(key, mode ? "1" : "0");
    }
    return logged(rc, "nvmlDeviceSetPersistenceMode", "index=%u mode=%d", i, mode);
}

static nvmlReturn_t memory(const char *fn, nvmlDevice_t h, unsigned long long *total,
                           unsigned long long *free_, unsigned long long *used) {
    DEVICE_QUERY(fn, h);
    const unsigned long long mib = 1024ULL * 1024ULL;
    *total = st.gpus[i].memory_total_mib * mib;
    *used = st.gpus[i].memory_used_mib * mib;
    *free_ = *total > *used ? *total - *used : 0;
    return logged(NVML_SUCCESS, fn, "index=%u", i);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m) {
    if (!m)
        return logged(NVML_ERROR_INVALID_ARGUMENT, "nvmlDeviceGetMemoryInfo", NULL);
    return memory("nvmlDeviceGetMemoryInfo", h, &m->total, &m->free, &m->used);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m) {
    if (!m)
        return logged(NVML_ERROR_INVALID_ARGUMENT, "nvmlDeviceGetMemoryInfo_v2", NULL);
    m->reserved = 0;
    return memory("nvmlDeviceGetMemoryInfo_v2", h, &m->total, &m->free, &m->used);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t h, int sensor, unsigned *temp) {
    DEVICE_QUERY("nvmlDeviceGetTemperature", h);
    if (sensor != 0)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (!temp)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else
        *temp = st.gpus[i].temperature;
    return logged(rc, "nvmlDeviceGetTemperature", "index=%u sensor=%d", i, sensor);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t h, nvmlTemperature_v1_t *t) {
    DEVICE_QUERY("nvmlDeviceGetTemperatureV", h);
    if (!t || t->sensorType != 0)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else
        t->temperature = (int)st.gpus[i].temperature;
    return logged(rc, "nvmlDeviceGetTemperatureV", "index=%u", i);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *u) {
    DEVICE_QUERY("nvmlDeviceGetUtilizationRates", h);
    if (!u)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else {
        u->gpu = st.gpus[i].util_gpu;
        u->memory = st.gpus[i].util_memory;
    }
    return logged(rc, "nvmlDeviceGetUtilizationRates", "index=%u", i);
}
