package sandpool

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the server's reasons.
const ErrorDomain = "sandpool"

// Kind is the class of a failure, chosen by the server's reason (the
// ErrorReason enum of errors.proto) or, without one, by the gRPC code. The
// Err* values are Kinds: test with errors.Is(err, sandpool.ErrNotFound).
type Kind int

// The kinds of failure (the exception classes of the Python and TypeScript
// clients).
const (
	// KindOther: a status no other kind describes (INTERNAL, UNIMPLEMENTED...).
	KindOther Kind = iota
	// KindPoolExhausted: RESOURCE_EXHAUSTED, every container is leased
	// (FAIL_FAST, or the wait ended), or a quota is reached.
	KindPoolExhausted
	// KindNotFound: NOT_FOUND, no such pool, run, context or path.
	KindNotFound
	// KindAlreadyExists: ALREADY_EXISTS, e.g. a pool name that is taken.
	KindAlreadyExists
	// KindInvalidArgument: INVALID_ARGUMENT, the request is wrong.
	KindInvalidArgument
	// KindFailedPrecondition: FAILED_PRECONDITION, a pool closed or failing...
	KindFailedPrecondition
	// KindDeadlineExceeded: DEADLINE_EXCEEDED, the call's deadline passed.
	KindDeadlineExceeded
	// KindUnauthenticated: UNAUTHENTICATED, missing or rejected token.
	KindUnauthenticated
	// KindPermissionDenied: PERMISSION_DENIED, role, pool list or policy.
	KindPermissionDenied
	// KindUnavailable: UNAVAILABLE, the server (or its engine) cannot be
	// reached, or it is shutting down.
	KindUnavailable
	// KindCancelled: CANCELLED, the caller's context ended the call.
	KindCancelled
	// KindLeaseLost: the session's lease is gone (see LeaseLostError).
	KindLeaseLost
	// KindPoolLost: an owned pool is gone (see PoolLostError).
	KindPoolLost
)

// The kinds as errors, for errors.Is.
var (
	ErrOther              error = KindOther
	ErrPoolExhausted      error = KindPoolExhausted
	ErrNotFound           error = KindNotFound
	ErrAlreadyExists      error = KindAlreadyExists
	ErrInvalidArgument    error = KindInvalidArgument
	ErrFailedPrecondition error = KindFailedPrecondition
	ErrDeadlineExceeded   error = KindDeadlineExceeded
	ErrUnauthenticated    error = KindUnauthenticated
	ErrPermissionDenied   error = KindPermissionDenied
	ErrUnavailable        error = KindUnavailable
	ErrCancelled          error = KindCancelled
	ErrLeaseLost          error = KindLeaseLost
	ErrPoolLost           error = KindPoolLost
)

var kindNames = map[Kind]string{
	KindOther:              "sandpool error",
	KindPoolExhausted:      "pool exhausted",
	KindNotFound:           "not found",
	KindAlreadyExists:      "already exists",
	KindInvalidArgument:    "invalid argument",
	KindFailedPrecondition: "failed precondition",
	KindDeadlineExceeded:   "deadline exceeded",
	KindUnauthenticated:    "unauthenticated",
	KindPermissionDenied:   "permission denied",
	KindUnavailable:        "unavailable",
	KindCancelled:          "cancelled",
	KindLeaseLost:          "lease lost",
	KindPoolLost:           "pool lost",
}

func (k Kind) Error() string { return kindNames[k] }

// FieldViolation is a google.rpc.BadRequest field violation.
type FieldViolation struct {
	// The field at fault, e.g. "config.min_pool_size".
	Field       string
	Description string
}

// PreconditionViolation is a google.rpc.PreconditionFailure violation.
type PreconditionViolation struct {
	// e.g. "LEASE_ENDED", "POOL_CLOSED", "CONTAINER_GONE".
	Type string
	// What it is about: a lease id, a pool name, a path.
	Subject     string
	Description string
}

// ErrorInfo is a google.rpc.ErrorInfo: why, in a machine-readable form.
type ErrorInfo struct {
	// e.g. "LEASE_NOT_FOUND", "LEASE_ENDED".
	Reason string
	// "sandpool" for the server's own reasons.
	Domain string
	// e.g. {"lease_id": "..."}.
	Metadata map[string]string
}

// Details are the rich error details the server sent with a status.
type Details struct {
	// ErrorInfo, when the server sent one.
	ErrorInfo              *ErrorInfo
	FieldViolations        []FieldViolation
	PreconditionViolations []PreconditionViolation
	// RetryDelay is google.rpc.RetryInfo's wait before retrying (0: none sent).
	RetryDelay time.Duration
}

// Error is every failure of a call to the server. Kind says what class of
// failure it is; Code and Details what the server answered.
type Error struct {
	Kind Kind
	// The gRPC status code.
	Code codes.Code
	// The server's message.
	Message string
	Details Details
	cause   error
}

func (e *Error) Error() string {
	return fmt.Sprintf("sandpool: [%s] %s", codeName(e.Code), e.Message)
}

// Is reports whether target is this error's Kind (errors.Is(err, ErrNotFound)).
func (e *Error) Is(target error) bool {
	k, ok := target.(Kind)
	return ok && k == e.Kind
}

// Unwrap gives the gRPC error the Error was made from.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus lets status.FromError and status.Code read the original status.
func (e *Error) GRPCStatus() *status.Status {
	if s, ok := status.FromError(e.cause); ok && e.cause != nil {
		return s
	}
	return status.New(e.Code, e.Message)
}

// Reason is the server's reason, typed. ok is false when the server sent
// none; a reason this client does not know is ERROR_REASON_UNSPECIFIED (its
// name is in Details.ErrorInfo.Reason).
func (e *Error) Reason() (reason pb.ErrorReason, ok bool) {
	return reasonOf(e.Details.ErrorInfo)
}

// Field is the first field the server named for an INVALID_ARGUMENT.
func (e *Error) Field() string {
	if len(e.Details.FieldViolations) > 0 {
		return e.Details.FieldViolations[0].Field
	}
	if m := invalidField.FindStringSubmatch(e.Message); m != nil {
		return m[1]
	}
	return ""
}

var invalidField = regexp.MustCompile(`^invalid ([\w.\[\]]+):`)

// LeaseLostError says that a session's lease is gone: it expired on the
// server (no keepalive within its TTL), was released, revoked (pool deleted,
// server stopping), its container is gone, or the keepalive failed for
// longer than the TTL. Acquire a new session. errors.Is(err, ErrLeaseLost).
type LeaseLostError struct {
	// Base holds the code, message and details.
	Base    *Error
	LeaseID string
	// Why the lease is gone, in words.
	Why string
	// How the lease ended when the server said so (EXPIRED, RELEASED,
	// REVOKED, NOT_FOUND, POOL_DELETED...); LEASE_STATE_UNSPECIFIED when the
	// client gave up on it (no keepalive confirmed within the TTL).
	State pb.LeaseState
}

func newLeaseLost(leaseID, why string, code codes.Code, state pb.LeaseState, base *Error) *LeaseLostError {
	e := &Error{Kind: KindLeaseLost, Code: code, Message: fmt.Sprintf("lease %s is lost: %s", leaseID, why)}
	if base != nil {
		e.Details, e.cause = base.Details, base.cause
	}
	return &LeaseLostError{Base: e, LeaseID: leaseID, Why: why, State: state}
}

func (e *LeaseLostError) Error() string { return e.Base.Error() }

// GRPCStatus is Base's: grpc-go's status.FromError does not unwrap.
func (e *LeaseLostError) GRPCStatus() *status.Status { return e.Base.GRPCStatus() }

// Unwrap exposes Base (for errors.As and errors.Is(err, ErrLeaseLost)) and,
// through it, the gRPC error.
func (e *LeaseLostError) Unwrap() error { return e.Base }

// PoolLostError says that an owned pool is gone: its owner TTL ran out on
// the server, someone deleted it, or this client confirmed no keepalive
// within the owner TTL (the server then deletes it by itself). Leases on it
// end with LEASE_STATE_POOL_DELETED. errors.Is(err, ErrPoolLost).
type PoolLostError struct {
	// Base holds the code, message and details.
	Base *Error
	Pool string
	// Why the pool is gone, in words.
	Why string
	// LEASE_STATE_NOT_FOUND when the server said it has no such pool of this
	// owner; LEASE_STATE_UNSPECIFIED when the client gave up on it.
	State pb.LeaseState
}

func newPoolLost(pool, why string, code codes.Code, state pb.LeaseState, base *Error) *PoolLostError {
	e := &Error{Kind: KindPoolLost, Code: code, Message: fmt.Sprintf("pool %s is lost: %s", pool, why)}
	if base != nil {
		e.Details, e.cause = base.Details, base.cause
	}
	return &PoolLostError{Base: e, Pool: pool, Why: why, State: state}
}

func (e *PoolLostError) Error() string { return e.Base.Error() }

// GRPCStatus is Base's: grpc-go's status.FromError does not unwrap.
func (e *PoolLostError) GRPCStatus() *status.Status { return e.Base.GRPCStatus() }

// Unwrap exposes Base (for errors.As and errors.Is(err, ErrPoolLost)).
func (e *PoolLostError) Unwrap() error { return e.Base }

// byReason is the kind of every reason the server gives; the lease reasons
// are KindLeaseLost on a call about that lease, else their code's kind. A
// test holds it complete against the generated enum.
var byReason = map[pb.ErrorReason]Kind{
	pb.ErrorReason_INVALID_FIELD:          KindInvalidArgument,
	pb.ErrorReason_TOO_LARGE:              KindInvalidArgument,
	pb.ErrorReason_POOL_NOT_FOUND:         KindNotFound,
	pb.ErrorReason_POOL_EXISTS:            KindAlreadyExists,
	pb.ErrorReason_POOL_CLOSED:            KindFailedPrecondition,
	pb.ErrorReason_POOL_FAILING:           KindFailedPrecondition,
	pb.ErrorReason_POOL_EXHAUSTED:         KindPoolExhausted,
	pb.ErrorReason_LEASE_NOT_FOUND:        KindLeaseLost,
	pb.ErrorReason_LEASE_ENDED:            KindLeaseLost,
	pb.ErrorReason_CONTAINER_GONE:         KindLeaseLost,
	pb.ErrorReason_RUN_NOT_FOUND:          KindNotFound,
	pb.ErrorReason_CONTEXT_NOT_FOUND:      KindNotFound,
	pb.ErrorReason_CONTEXT_FAILED:         KindFailedPrecondition,
	pb.ErrorReason_PATH_NOT_FOUND:         KindNotFound,
	pb.ErrorReason_FILE_OPERATION_FAILED:  KindFailedPrecondition,
	pb.ErrorReason_NOT_ALLOWED:            KindFailedPrecondition,
	pb.ErrorReason_INSTALL_FAILED:         KindFailedPrecondition,
	pb.ErrorReason_IMAGE_MISSING:          KindFailedPrecondition,
	pb.ErrorReason_ENGINE_UNAVAILABLE:     KindUnavailable,
	pb.ErrorReason_ENGINE_FAILED:          KindUnavailable,
	pb.ErrorReason_BACKEND_UNSUPPORTED:    KindOther,
	pb.ErrorReason_SANDBOX_COMMAND_FAILED: KindOther,
	pb.ErrorReason_SHUTTING_DOWN:          KindUnavailable,
	pb.ErrorReason_UNAUTHENTICATED:        KindUnauthenticated,
	pb.ErrorReason_NOT_PERMITTED:          KindPermissionDenied,
	pb.ErrorReason_POLICY_VIOLATION:       KindPermissionDenied,
	pb.ErrorReason_QUOTA_EXCEEDED:         KindPoolExhausted,
	pb.ErrorReason_RUN_ID_TAKEN:           KindAlreadyExists,
	pb.ErrorReason_STREAM_SUPERSEDED:      KindOther,
}

// byCode is the kind of a status without a reason this client knows.
var byCode = map[codes.Code]Kind{
	codes.ResourceExhausted:  KindPoolExhausted,
	codes.NotFound:           KindNotFound,
	codes.AlreadyExists:      KindAlreadyExists,
	codes.InvalidArgument:    KindInvalidArgument,
	codes.FailedPrecondition: KindFailedPrecondition,
	codes.DeadlineExceeded:   KindDeadlineExceeded,
	codes.Unauthenticated:    KindUnauthenticated,
	codes.PermissionDenied:   KindPermissionDenied,
	codes.Unavailable:        KindUnavailable,
	codes.Canceled:           KindCancelled,
}

func reasonOf(info *ErrorInfo) (pb.ErrorReason, bool) {
	if info == nil || info.Domain != ErrorDomain {
		return 0, false
	}
	if v, ok := pb.ErrorReason_value[info.Reason]; ok {
		return pb.ErrorReason(v), true
	}
	return pb.ErrorReason_ERROR_REASON_UNSPECIFIED, true
}

func codeName(c codes.Code) string {
	// codes.Code's String is "NotFound"; the other clients and the server
	// say NOT_FOUND.
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// mapError turns any error of a call into an *Error (a *LeaseLostError or
// *PoolLostError passes through). nil stays nil.
func mapError(err error) error {
	if err == nil {
		return nil
	}
	var lease *LeaseLostError
	var pool *PoolLostError
	var mapped *Error
	if errors.As(err, &lease) || errors.As(err, &pool) || errors.As(err, &mapped) {
		return err
	}
	return toError(err)
}

func toError(err error) *Error {
	st, ok := status.FromError(err)
	if !ok {
		// Not a status: the caller's context, or a client-side failure.
		code := status.FromContextError(err).Code()
		if code == codes.Unknown {
			code = codes.Internal
		}
		return &Error{Kind: kindOf(code, Details{}), Code: code, Message: err.Error(), cause: err}
	}
	d := decodeDetails(st)
	return &Error{Kind: kindOf(st.Code(), d), Code: st.Code(), Message: st.Message(), Details: d, cause: err}
}

func kindOf(code codes.Code, d Details) Kind {
	if r, ok := reasonOf(d.ErrorInfo); ok && r != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
		// A lease reason is a lease loss only on a call about that lease
		// (mapLeaseError); elsewhere its code decides.
		if k, known := byReason[r]; known && k != KindLeaseLost {
			return k
		}
	}
	if k, ok := byCode[code]; ok {
		return k
	}
	return KindOther
}

func decodeDetails(st *status.Status) Details {
	var d Details
	for _, detail := range st.Details() {
		switch v := detail.(type) {
		case *errdetails.ErrorInfo:
			d.ErrorInfo = &ErrorInfo{Reason: v.GetReason(), Domain: v.GetDomain(), Metadata: v.GetMetadata()}
			if d.ErrorInfo.Metadata == nil {
				d.ErrorInfo.Metadata = map[string]string{}
			}
		case *errdetails.BadRequest:
			for _, f := range v.GetFieldViolations() {
				d.FieldViolations = append(d.FieldViolations, FieldViolation{Field: f.GetField(), Description: f.GetDescription()})
			}
		case *errdetails.PreconditionFailure:
			for _, p := range v.GetViolations() {
				d.PreconditionViolations = append(d.PreconditionViolations,
					PreconditionViolation{Type: p.GetType(), Subject: p.GetSubject(), Description: p.GetDescription()})
			}
		case *errdetails.RetryInfo:
			if rd := v.GetRetryDelay(); rd != nil {
				d.RetryDelay = time.Duration(rd.GetSeconds())*time.Second + time.Duration(rd.GetNanos())
			}
		}
		// Anything else (an unknown detail, or one that failed to decode and
		// came back as an error) is ignored; the code and message still hold.
	}
	return d
}

// mapLeaseError maps an error of a call made on a lease: the server saying
// that this lease is gone becomes a *LeaseLostError; anything else maps as
// usual. The server says so with a lease reason (LEASE_NOT_FOUND,
// LEASE_ENDED, CONTAINER_GONE) whose metadata lease_id is this lease;
// servers without ErrorInfo by a CONTAINER_GONE precondition violation or a
// message about the lease.
func mapLeaseError(err error, leaseID string) error {
	m := mapError(err)
	e, ok := m.(*Error)
	if !ok || !leaseIsGone(e, leaseID) {
		return m
	}
	return newLeaseLost(leaseID, e.Message, e.Code, endOf(e), e)
}

func leaseIsGone(e *Error, leaseID string) bool {
	info := e.Details.ErrorInfo
	if r, ok := reasonOf(info); ok && r != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
		if byReason[r] != KindLeaseLost {
			return false
		}
		id, has := info.Metadata["lease_id"]
		return !has || id == leaseID
	}
	for _, v := range e.Details.PreconditionViolations {
		if v.Subject == leaseID && v.Type == "CONTAINER_GONE" {
			return true
		}
	}
	return info == nil && (e.Code == codes.NotFound || e.Code == codes.FailedPrecondition) &&
		(strings.HasPrefix(e.Message, "lease "+leaseID+" ") ||
			strings.HasPrefix(e.Message, "the container of lease "+leaseID+" is gone"))
}

// endOf is how the lease ended, by the reason and its `end` metadata (a
// LeaseState name).
func endOf(e *Error) pb.LeaseState {
	r, _ := reasonOf(e.Details.ErrorInfo)
	switch r {
	case pb.ErrorReason_LEASE_NOT_FOUND:
		return pb.LeaseState_LEASE_STATE_NOT_FOUND
	case pb.ErrorReason_LEASE_ENDED:
		end := e.Details.ErrorInfo.Metadata["end"]
		if !strings.HasPrefix(end, "LEASE_STATE_") {
			end = "LEASE_STATE_" + end
		}
		return pb.LeaseState(pb.LeaseState_value[end])
	}
	return pb.LeaseState_LEASE_STATE_UNSPECIFIED
}

// mapPoolError maps an error of a call about an owned pool: the server
// saying that this pool is gone (reason POOL_NOT_FOUND or POOL_CLOSED about
// this pool; without details, NOT_FOUND) becomes a *PoolLostError.
func mapPoolError(err error, pool string) error {
	m := mapError(err)
	e, ok := m.(*Error)
	if !ok {
		return m
	}
	var gone bool
	if r, known := reasonOf(e.Details.ErrorInfo); known && r != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
		name, has := e.Details.ErrorInfo.Metadata["pool"]
		gone = (r == pb.ErrorReason_POOL_NOT_FOUND || r == pb.ErrorReason_POOL_CLOSED) && (!has || name == pool)
	} else {
		gone = e.Code == codes.NotFound
	}
	if !gone {
		return m
	}
	state := pb.LeaseState_LEASE_STATE_UNSPECIFIED
	if e.Code == codes.NotFound {
		state = pb.LeaseState_LEASE_STATE_NOT_FOUND
	}
	return newPoolLost(pool, e.Message, e.Code, state, e)
}
