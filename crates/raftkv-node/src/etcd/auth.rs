//! `etcdserverpb.Auth` on the etcd port, as far as raftkv's tokens map onto it: a node's
//! `--auth-file` lines (`NAME ROLE TOKEN`) are etcd's users, with the token as the password.
//! `Authenticate(NAME, TOKEN)` answers with that token, which etcd's clients then send as
//! `token` metadata on every call and the client gate accepts like a Bearer token (roles as on
//! the native port). Users, roles and enabling auth are managed in the file, not through the
//! API: those RPCs are refused with `UNIMPLEMENTED` saying so.

use std::sync::Arc;

use raftkv_proto::etcd::etcdserverpb::auth_server::Auth;
use raftkv_proto::etcd::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse,
    AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};
use tonic::{Request, Response, Status};

use crate::admission::access::AccessControl;
use crate::consensus::core::NodeCore;
use crate::etcd::convert;

pub struct EtcdAuth {
    core: NodeCore,
    access: Option<Arc<AccessControl>>,
}

impl EtcdAuth {
    pub fn new(core: NodeCore, access: Option<Arc<AccessControl>>) -> Self {
        Self { core, access }
    }
}

fn managed_by_auth_file(what: &str) -> Status {
    Status::unimplemented(format!(
        "raftkv's etcd API does not support {what}: users, roles and tokens are the lines of the nodes' \
         --auth-file (NAME ROLE TOKEN; see docs/security.md)"
    ))
}

#[tonic::async_trait]
impl Auth for EtcdAuth {
    async fn auth_status(&self, _request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(AuthStatusResponse {
            header: convert::header(Some(self.core.header())),
            enabled: self.access.is_some(),
            auth_revision: 0,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let Some(access) = &self.access else {
            return Err(Status::failed_precondition("etcdserver: authentication is not enabled"));
        };
        let r = request.into_inner();
        match access.check_password(&r.name, &r.password) {
            Some(_) => Ok(Response::new(AuthenticateResponse {
                header: convert::header(Some(self.core.header())),
                token: r.password,
            })),
            None => Err(Status::invalid_argument(
                "etcdserver: authentication failed, invalid user ID or password",
            )),
        }
    }

    async fn auth_enable(&self, _request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        Err(managed_by_auth_file("AuthEnable"))
    }

    async fn auth_disable(
        &self,
        _request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        Err(managed_by_auth_file("AuthDisable"))
    }

    async fn user_add(&self, _request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        Err(managed_by_auth_file("UserAdd"))
    }

    async fn user_get(&self, _request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        Err(managed_by_auth_file("UserGet"))
    }

    async fn user_list(
        &self,
        _request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        Err(managed_by_auth_file("UserList"))
    }

    async fn user_delete(
        &self,
        _request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        Err(managed_by_auth_file("UserDelete"))
    }

    async fn user_change_password(
        &self,
        _request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        Err(managed_by_auth_file("UserChangePassword"))
    }

    async fn user_grant_role(
        &self,
        _request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        Err(managed_by_auth_file("UserGrantRole"))
    }

    async fn user_revoke_role(
        &self,
        _request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        Err(managed_by_auth_file("UserRevokeRole"))
    }

    async fn role_add(&self, _request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        Err(managed_by_auth_file("RoleAdd"))
    }

    async fn role_get(&self, _request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        Err(managed_by_auth_file("RoleGet"))
    }

    async fn role_list(
        &self,
        _request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        Err(managed_by_auth_file("RoleList"))
    }

    async fn role_delete(
        &self,
        _request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        Err(managed_by_auth_file("RoleDelete"))
    }

    async fn role_grant_permission(
        &self,
        _request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        Err(managed_by_auth_file("RoleGrantPermission"))
    }

    async fn role_revoke_permission(
        &self,
        _request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        Err(managed_by_auth_file("RoleRevokePermission"))
    }
}
